//! Conformance: checks any HTTP adapter, written in any language, against
//! PowerstripProtocolVersion 1 (`PROTOCOL.md`), and reports what it got wrong.
//!
//! [`check`] POSTs a fixed set of hook calls to the adapter exactly as the proxy does
//! (`POST`, `Content-Type: application/json`, the body from
//! [`encode_call`]), one fresh connection per call, each bounded by
//! [`Options::timeout`], and judges every answer. It never panics because of what the
//! adapter does: a hang, a reset, an HTML page or a wrong field is a failed
//! [`CheckResult`] whose message quotes the offending part of the answer.
//!
//! A hook answer passes when it is either
//! - `200` with a valid `ModifiedClientRequest` / `ModifiedServerResponse`
//!   (`PowerstripProtocolVersion` 1, every field present, `Body` a string or `null`; a
//!   pre-hook keeps the method and the path, and may change the query string and body), or
//! - a refusal: a `4xx` with a Docker-style body, `{"message": "<non-empty text>"}` (what
//!   the docker CLI prints after `Error response from daemon:`).
//!
//! Calls that are not valid PowerstripProtocolVersion 1 documents must be refused the same
//! Docker-style way, with a `4xx`.
//!
//! From an adapter's own tests (the adapter listening at a known address):
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use powerstrip_testkit::conformance::{Options, check};
//!
//! let report = check("http://127.0.0.1:9000/my-adapter", &Options::default()).await;
//! assert!(report.is_success(), "{report}");
//! # }
//! ```
//!
//! `powerstrip conformance URL` prints the same [`Report`].

use std::error::Error as StdError;
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use powerstrip_config::AdapterUrl;
use powerstrip_protocol::{ClientRequest, HookCall, ServerResponse, WithheldBody, encode_call};
use serde_json::{Map, Value, json};

use crate::net::{Address, BoxedIo, connect};

/// Check: a pre-hook call carrying a realistic `POST /containers/create`.
const PRE_CREATE: &str = "pre-hook on container create";
/// Check: a pre-hook call whose `Body` is `null`.
const PRE_NULL: &str = "pre-hook with a null body";
/// Check: a pre-hook must keep body fields it does not know.
const PRE_UNKNOWN: &str = "pre-hook keeps unknown fields";
/// Check: a pre-hook call whose body streams to Docker unseen (`BodyWithheld`): the answer
/// must not invent a body.
const PRE_WITHHELD: &str = "pre-hook with a withheld body";
/// Check: a post-hook call on Docker's `201` answer to a create.
const POST_CREATE: &str = "post-hook on container create";
/// Check: a post-hook call whose `ServerResponse.Body` is `null` (a `204`).
const POST_NULL: &str = "post-hook with a null body";
/// Check: a post-hook must keep response fields it does not know.
const POST_UNKNOWN: &str = "post-hook keeps unknown fields";
/// Check: a post-hook call on a Docker `404`.
const POST_ERROR: &str = "post-hook on a Docker error";
/// Check: a body that is not JSON gets a Docker-style `4xx`.
const NOT_JSON: &str = "rejects a call that is not JSON";
/// Check: a call of another protocol version gets a Docker-style `4xx`.
const VERSION_2: &str = "rejects PowerstripProtocolVersion 2";
/// Check: a summary over every call above.
const IN_TIME: &str = "answers within the timeout";

/// The name of every check, in the order [`check`] reports them.
pub const CHECKS: [&str; 11] = [
    PRE_CREATE,
    PRE_NULL,
    PRE_UNKNOWN,
    PRE_WITHHELD,
    POST_CREATE,
    POST_NULL,
    POST_UNKNOWN,
    POST_ERROR,
    NOT_JSON,
    VERSION_2,
    IN_TIME,
];

/// The longest answer read from the adapter; anything longer is a failed check.
const MAX_ANSWER: usize = 16 * 1024 * 1024;

/// How many characters of an answer a message quotes.
const QUOTE_CHARS: usize = 200;

/// How [`check`] runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// The most one call may take, connecting included; a call that takes longer fails its
    /// check (and the summary check), and the suite moves on. Default: 10 s.
    pub timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            timeout: Duration::from_secs(10),
        }
    }
}

/// The outcome of one named check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckResult {
    /// Which check (one of [`CHECKS`]).
    pub name: &'static str,
    /// `Ok(what the adapter did)` (e.g. `refused with 403 Forbidden: "no" (2.1 ms)`), or
    /// `Err(what is wrong)`, quoting the offending part of the answer.
    pub outcome: Result<String, String>,
    /// How long the call took (for the summary check: the slowest call).
    pub elapsed: Duration,
}

impl CheckResult {
    /// Whether the check passed.
    pub fn passed(&self) -> bool {
        self.outcome.is_ok()
    }
}

/// The result of every check, in the order of [`CHECKS`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// One result per check.
    pub checks: Vec<CheckResult>,
}

impl Report {
    /// How many checks passed.
    pub fn passed(&self) -> usize {
        self.checks.iter().filter(|c| c.passed()).count()
    }

    /// How many checks failed.
    pub fn failed(&self) -> usize {
        self.checks.len() - self.passed()
    }

    /// Whether there were checks and every one passed.
    pub fn is_success(&self) -> bool {
        !self.checks.is_empty() && self.failed() == 0
    }

    /// The result of the check called `name`, if the report has it.
    pub fn find(&self, name: &str) -> Option<&CheckResult> {
        self.checks.iter().find(|c| c.name == name)
    }
}

impl fmt::Display for Report {
    /// One line per check, `ok    <name>: <detail>` or `FAIL  <name>: <problem>`, then
    /// `N passed, N failed` (no newline after it).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for check in &self.checks {
            match &check.outcome {
                Ok(detail) => writeln!(f, "ok    {}: {detail}", check.name)?,
                Err(problem) => writeln!(f, "FAIL  {}: {problem}", check.name)?,
            }
        }
        write!(f, "{} passed, {} failed", self.passed(), self.failed())
    }
}

/// Runs every check against the adapter at `url` (`http://host:port/path`, or
/// `unix:///path/to.sock`, where hooks are POSTed to `/`), one call after the other.
///
/// Never panics on anything the adapter does; an unusable `url` fails every check with
/// the reason.
pub async fn check(url: &str, options: &Options) -> Report {
    let target = Target::parse(url);
    let mut checks = Vec::with_capacity(CHECKS.len());
    // Per call: its check's name, how long it took, and why it got no answer, if so.
    let mut calls: Vec<(&'static str, Duration, Option<CallError>)> = Vec::new();
    for probe in probes() {
        let started = Instant::now();
        let answer = match &target {
            Ok(target) => target.send(&probe.body, options.timeout).await,
            Err(problem) => Err(CallError {
                message: problem.clone(),
                timed_out: false,
            }),
        };
        let elapsed = started.elapsed();
        let outcome = match &answer {
            Ok(answer) => probe
                .expect
                .judge(answer)
                .map(|detail| format!("{detail} ({})", millis(elapsed))),
            Err(error) => Err(error.message.clone()),
        };
        checks.push(CheckResult {
            name: probe.name,
            outcome,
            elapsed,
        });
        calls.push((probe.name, elapsed, answer.err()));
    }
    checks.push(summary(&target, &calls, options.timeout));
    Report { checks }
}

/// The "answers within the timeout" check, over every call made.
fn summary(
    target: &Result<Target, String>,
    calls: &[(&'static str, Duration, Option<CallError>)],
    timeout: Duration,
) -> CheckResult {
    let slowest = calls
        .iter()
        .max_by_key(|(_, elapsed, _)| *elapsed)
        .map(|(name, elapsed, _)| (*name, *elapsed));
    let elapsed = slowest.map_or(Duration::ZERO, |(_, elapsed)| elapsed);
    let timed_out: Vec<&str> = calls
        .iter()
        .filter(|(_, _, error)| error.as_ref().is_some_and(|e| e.timed_out))
        .map(|(name, _, _)| *name)
        .collect();
    let unanswered: Vec<&CallError> = calls.iter().filter_map(|(_, _, e)| e.as_ref()).collect();
    let outcome = if let Err(problem) = target {
        Err(problem.clone())
    } else if !timed_out.is_empty() {
        Err(format!(
            "{} of {} calls got no answer within {}: {}",
            timed_out.len(),
            calls.len(),
            human(timeout),
            timed_out.join(", ")
        ))
    } else if let Some(first) = unanswered.first() {
        Err(format!(
            "{} of {} calls got no answer; the first: {}",
            unanswered.len(),
            calls.len(),
            first.message
        ))
    } else {
        match slowest {
            Some((name, elapsed)) => Ok(format!(
                "every call answered within {}; the slowest in {} ({name})",
                human(timeout),
                millis(elapsed)
            )),
            None => Err("no call was made".to_owned()),
        }
    };
    CheckResult {
        name: IN_TIME,
        outcome,
        elapsed,
    }
}

// ---------------------------------------------------------------------------------------
// The calls.

/// One call and how to judge its answer.
struct Probe {
    /// The check it feeds.
    name: &'static str,
    /// The exact body POSTed.
    body: Vec<u8>,
    /// What a conforming answer looks like.
    expect: Expect,
}

/// What a conforming answer to a [`Probe`] looks like.
enum Expect {
    /// A `ModifiedClientRequest` with `sent`'s method and path, keeping `kept`; or a refusal.
    Pre {
        /// The `ClientRequest` sent.
        sent: ClientRequest,
        /// Unknown body fields the answer's body must still hold (none to skip the check).
        kept: Vec<Kept>,
    },
    /// A `ModifiedServerResponse` keeping `kept`; or a refusal.
    Post {
        /// The `ServerResponse` sent.
        sent: ServerResponse,
        /// Unknown body fields the answer's body must still hold (none to skip the check).
        kept: Vec<Kept>,
    },
    /// A Docker-style `4xx`: the call was not something the adapter can have understood.
    Rejection {
        /// The call, for messages ("a call that is not JSON").
        what: &'static str,
    },
}

/// A field the adapter does not know, which it must pass on untouched.
struct Kept {
    /// Its dotted name, for messages (`HostConfig.XConformanceNested`).
    field: &'static str,
    /// Its JSON pointer in the body (`/HostConfig/XConformanceNested`).
    pointer: &'static str,
    /// Its value as sent.
    value: Value,
}

/// The unknown fields the "keeps unknown fields" checks add: one at the top level and one
/// nested in `nested_in` (an object the body already has).
fn unknown_fields(nested_in: &'static str) -> Vec<Kept> {
    let (field, pointer) = match nested_in {
        "Config" => ("Config.XConformanceNested", "/Config/XConformanceNested"),
        _ => (
            "HostConfig.XConformanceNested",
            "/HostConfig/XConformanceNested",
        ),
    };
    vec![
        Kept {
            field: "XConformance",
            pointer: "/XConformance",
            value: json!({"kept": [1, {"deep": null}]}),
        },
        Kept {
            field,
            pointer,
            value: json!("x"),
        },
    ]
}

/// Adds `kept` to `body` (each pointer's parent must exist).
fn with_fields(mut body: Value, kept: &[Kept]) -> Value {
    for k in kept {
        let (parent, name) = k.pointer.rsplit_once('/').unwrap_or(("", k.pointer));
        if let Some(Value::Object(object)) = body.pointer_mut(parent) {
            object.insert(name.to_owned(), k.value.clone());
        }
    }
    body
}

/// The body the docker CLI (24.x) sends for `docker run --user 1000 -e CONFORMANCE=1
/// busybox:local sh -c 'echo conformance'`.
fn create_body() -> Value {
    // In two parts: one `json!` this size would exceed the macro recursion limit.
    let mut host_config = json!({
        "Binds": null, "ContainerIDFile": "", "LogConfig": {"Type": "", "Config": {}},
        "NetworkMode": "default", "PortBindings": {},
        "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0},
        "AutoRemove": false, "VolumeDriver": "", "VolumesFrom": null, "ConsoleSize": [24, 80],
        "CapAdd": null, "CapDrop": null, "CgroupnsMode": "", "Dns": [], "DnsOptions": [],
        "DnsSearch": [], "ExtraHosts": null, "GroupAdd": null, "IpcMode": "", "Cgroup": "",
        "Links": null, "OomScoreAdj": 0, "PidMode": "", "Privileged": false
    });
    let resources = json!({
        "PublishAllPorts": false, "ReadonlyRootfs": false, "SecurityOpt": null,
        "UTSMode": "", "UsernsMode": "", "ShmSize": 0, "Isolation": "", "CpuShares": 0,
        "Memory": 0, "NanoCpus": 0, "CgroupParent": "", "BlkioWeight": 0, "Devices": [],
        "MemoryReservation": 0, "MemorySwap": 0, "PidsLimit": null, "Ulimits": null,
        "Mounts": null, "MaskedPaths": null, "ReadonlyPaths": null
    });
    if let (Value::Object(host_config), Value::Object(resources)) = (&mut host_config, resources) {
        host_config.extend(resources);
    }
    json!({
        "Hostname": "", "Domainname": "", "User": "1000",
        "AttachStdin": false, "AttachStdout": true, "AttachStderr": true,
        "Tty": false, "OpenStdin": false, "StdinOnce": false,
        "Env": ["CONFORMANCE=1"],
        "Cmd": ["sh", "-c", "echo conformance"],
        "Image": "busybox:local",
        "Volumes": {}, "WorkingDir": "", "Entrypoint": null, "OnBuild": null, "Labels": {},
        "HostConfig": host_config,
        "NetworkingConfig": {"EndpointsConfig": {}}
    })
}

/// The id of the container the calls pretend to create.
const CONTAINER_ID: &str = "4f5a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a";

/// `POST /v1.41/containers/create?name=conformance` with `body`.
fn create_request(body: &Value) -> ClientRequest {
    ClientRequest::new(
        "POST",
        "/v1.41/containers/create?name=conformance",
        Some(body.to_string()),
    )
}

/// Every call, in the order of [`CHECKS`] (the summary aside).
fn probes() -> Vec<Probe> {
    let pre = |name, sent: ClientRequest, kept| Probe {
        name,
        body: encode_call(&HookCall::PreHook {
            client_request: sent.clone(),
        }),
        expect: Expect::Pre { sent, kept },
    };
    let post = |name, client_request, sent: ServerResponse, kept| Probe {
        name,
        body: encode_call(&HookCall::PostHook {
            client_request,
            server_response: sent.clone(),
        }),
        expect: Expect::Post { sent, kept },
    };
    let create = create_request(&create_body());
    let start = ClientRequest::new(
        "POST",
        format!("/v1.41/containers/{CONTAINER_ID}/start"),
        None,
    );

    let pre_kept = unknown_fields("HostConfig");
    let pre_unknown = create_request(&with_fields(create_body(), &pre_kept));

    let post_kept = unknown_fields("Config");
    let inspect = json!({
        "Id": CONTAINER_ID,
        "Created": "2024-01-01T00:00:00.000000000Z",
        "Path": "sh",
        "Args": ["-c", "echo conformance"],
        "State": {"Status": "created", "Running": false, "Pid": 0, "ExitCode": 0},
        "Image": "sha256:9211bbaa0dbd68fed073065eb9f0a6ed00a75090a9235eca2554c62d1e75c58f",
        "Name": "/conformance",
        "Config": {"User": "1000", "Env": ["CONFORMANCE=1"], "Image": "busybox:local", "Labels": {}}
    });

    let version_2 = json!({
        "PowerstripProtocolVersion": 2,
        "Type": "pre-hook",
        "ClientRequest": {"Method": "GET", "Request": "/v1.41/containers/json", "Body": null}
    });

    vec![
        pre(PRE_CREATE, create.clone(), Vec::new()),
        pre(
            PRE_NULL,
            ClientRequest::new("GET", "/v1.41/containers/json?all=1", None),
            Vec::new(),
        ),
        pre(PRE_UNKNOWN, pre_unknown, pre_kept),
        pre(
            PRE_WITHHELD,
            ClientRequest::new(
                "PUT",
                format!("/v1.41/containers/{CONTAINER_ID}/archive?path=%2Ftmp"),
                None,
            )
            .with_withheld_body(WithheldBody {
                content_type: "application/x-tar".into(),
                content_length: Some(10240),
            }),
            Vec::new(),
        ),
        post(
            POST_CREATE,
            create,
            ServerResponse {
                content_type: "application/json".into(),
                body: Some(json!({"Id": CONTAINER_ID, "Warnings": []}).to_string()),
                code: 201,
            },
            Vec::new(),
        ),
        post(
            POST_NULL,
            start,
            ServerResponse {
                content_type: String::new(),
                body: None,
                code: 204,
            },
            Vec::new(),
        ),
        post(
            POST_UNKNOWN,
            ClientRequest::new("GET", "/v1.41/containers/conformance/json", None),
            ServerResponse {
                content_type: "application/json".into(),
                body: Some(with_fields(inspect, &post_kept).to_string()),
                code: 200,
            },
            post_kept,
        ),
        post(
            POST_ERROR,
            ClientRequest::new("POST", "/v1.41/containers/x/start", None),
            ServerResponse {
                content_type: "application/json".into(),
                body: Some(json!({"message": "No such container: x"}).to_string()),
                code: 404,
            },
            Vec::new(),
        ),
        Probe {
            name: NOT_JSON,
            body: b"this is not json".to_vec(),
            expect: Expect::Rejection {
                what: "a call that is not JSON",
            },
        },
        Probe {
            name: VERSION_2,
            body: version_2.to_string().into_bytes(),
            expect: Expect::Rejection {
                what: "a PowerstripProtocolVersion 2 call",
            },
        },
    ]
}

// ---------------------------------------------------------------------------------------
// Judging answers.

/// A complete answer from the adapter.
struct Answer {
    /// Its status.
    status: StatusCode,
    /// Its whole body.
    body: Bytes,
}

/// The usual end of a message about a hook answer that is neither valid nor a refusal.
const HOOK_ANSWERS: &str = "a hook answers 200, or refuses with a 4xx and {\"message\": ...}";

impl Expect {
    /// `Ok(what the adapter did)` or `Err(what is wrong)`.
    fn judge(&self, answer: &Answer) -> Result<String, String> {
        match self {
            Expect::Pre { sent, kept } => judge_hook(answer, |doc| judge_pre(doc, sent, kept)),
            Expect::Post { sent, kept } => judge_hook(answer, |doc| judge_post(doc, sent, kept)),
            Expect::Rejection { what } => judge_rejection(answer, what),
        }
    }
}

/// A hook answer: `200` judged by `judge_document`, or a Docker-style `4xx` refusal.
fn judge_hook(
    answer: &Answer,
    judge_document: impl FnOnce(&Value) -> Result<String, String>,
) -> Result<String, String> {
    let status = answer.status;
    if status == StatusCode::OK {
        let document: Value = serde_json::from_slice(&answer.body).map_err(|e| {
            format!(
                "answered 200 but the body is not JSON ({e}): {}",
                quote(&answer.body)
            )
        })?;
        judge_document(&document)
    } else if status.is_client_error() {
        let message = docker_message(answer)?;
        Ok(format!("refused with {status}: {message}"))
    } else {
        Err(format!(
            "answered {status}; {HOOK_ANSWERS}: {}",
            quote(&answer.body)
        ))
    }
}

/// A call the adapter cannot have understood: it must answer a Docker-style `4xx`.
fn judge_rejection(answer: &Answer, what: &str) -> Result<String, String> {
    let status = answer.status;
    if status.is_client_error() {
        let message = docker_message(answer)?;
        let usual = if status == StatusCode::BAD_REQUEST {
            ""
        } else {
            " (400 is usual)"
        };
        Ok(format!("refused with {status}: {message}{usual}"))
    } else {
        Err(format!(
            "answered {status} to {what}; it must refuse it with a 4xx (400) and \
             {{\"message\": ...}}: {}",
            quote(&answer.body)
        ))
    }
}

/// The non-empty `message` of a Docker-style refusal, quoted, or why the body is not one.
fn docker_message(answer: &Answer) -> Result<String, String> {
    let status = answer.status;
    match serde_json::from_slice::<Value>(&answer.body) {
        Ok(Value::Object(object)) => match object.get("message") {
            Some(Value::String(message)) if !message.trim().is_empty() => {
                Ok(format!("\"{}\"", quote_str(message)))
            }
            Some(Value::String(_)) => Err(format!(
                "refused with {status} but its \"message\" is empty: {}",
                quote(&answer.body)
            )),
            _ => Err(not_docker_style(answer)),
        },
        _ => Err(not_docker_style(answer)),
    }
}

fn not_docker_style(answer: &Answer) -> String {
    format!(
        "refused with {} but the body is not {{\"message\": ...}}: {}",
        answer.status,
        quote(&answer.body)
    )
}

/// A `200` pre-hook answer.
fn judge_pre(document: &Value, sent: &ClientRequest, kept: &[Kept]) -> Result<String, String> {
    const OWNER: &str = "ModifiedClientRequest";
    let modified = envelope(document, OWNER)?;
    let method = string_field(modified, OWNER, "Method")?;
    let request = string_field(modified, OWNER, "Request")?;
    let body = body_field(modified, OWNER)?;
    if method != sent.method {
        return Err(format!(
            "changed the Method from {:?} to {method:?}; an adapter must not move the \
             request to another endpoint",
            sent.method
        ));
    }
    let got = ClientRequest::new(method, request, body.map(str::to_owned));
    if got.path() != sent.path() {
        return Err(format!(
            "changed the path from {:?} to {:?}; an adapter must not move the request to \
             another endpoint (it may change the query string)",
            sent.path(),
            quote_str(got.path())
        ));
    }
    if sent.withheld.is_some() && body.is_some() {
        return Err(
            "answered a Body for a request whose body was withheld (BodyWithheld: it streams to \
             Docker unseen); the Body must stay null"
                .to_owned(),
        );
    }
    keeps(OWNER, body, kept)?;
    let mut changes = Vec::new();
    if got.query() != sent.query() {
        changes.push("query string rewritten");
    }
    if !same_body(got.body.as_deref(), sent.body.as_deref()) {
        changes.push(body_change(got.body.as_deref(), sent.body.as_deref()));
    }
    Ok(format!("valid {OWNER}, {}", describe(&changes)))
}

/// A `200` post-hook answer.
fn judge_post(document: &Value, sent: &ServerResponse, kept: &[Kept]) -> Result<String, String> {
    const OWNER: &str = "ModifiedServerResponse";
    let modified = envelope(document, OWNER)?;
    let content_type = string_field(modified, OWNER, "ContentType")?;
    let body = body_field(modified, OWNER)?;
    let code = match modified.get("Code") {
        None => return Err(missing(OWNER, "Code", modified)),
        Some(value) => match value.as_u64() {
            Some(code @ 100..=599) => code,
            _ => {
                return Err(format!(
                    "{OWNER}.Code must be an HTTP status from 100 to 599, got {}",
                    describe_value(value)
                ));
            }
        },
    };
    keeps(OWNER, body, kept)?;
    let mut changes = Vec::new();
    let code_change;
    if code != u64::from(sent.code) {
        code_change = format!("Code {} changed to {code}", sent.code);
        changes.push(code_change.as_str());
    }
    if content_type != sent.content_type {
        changes.push("ContentType changed");
    }
    if !same_body(body, sent.body.as_deref()) {
        changes.push(body_change(body, sent.body.as_deref()));
    }
    Ok(format!("valid {OWNER}, {}", describe(&changes)))
}

/// Checks the answer's object, version and `key` object; returns the latter.
fn envelope<'a>(document: &'a Value, key: &str) -> Result<&'a Map<String, Value>, String> {
    let Value::Object(answer) = document else {
        return Err(format!(
            "answered 200 but the body is not a JSON object: {}",
            quote_json(document)
        ));
    };
    match answer.get("PowerstripProtocolVersion") {
        None => {
            return Err(format!(
                "the answer has no PowerstripProtocolVersion (it must be 1): {}",
                quote_json(document)
            ));
        }
        Some(version) if version.as_u64() == Some(1) => {}
        Some(version) => {
            return Err(format!(
                "PowerstripProtocolVersion is {}, expected 1",
                quote_json(version)
            ));
        }
    }
    match answer.get(key) {
        None => Err(format!("the answer has no {key}: {}", quote_json(document))),
        Some(Value::Object(object)) => Ok(object),
        Some(other) => Err(format!(
            "{key} must be an object, got {}",
            describe_value(other)
        )),
    }
}

fn missing(owner: &str, field: &str, object: &Map<String, Value>) -> String {
    format!(
        "{owner} has no {field}: {}",
        quote_str(&Value::Object(object.clone()).to_string())
    )
}

/// A required string field.
fn string_field<'a>(
    object: &'a Map<String, Value>,
    owner: &str,
    field: &str,
) -> Result<&'a str, String> {
    match object.get(field) {
        None => Err(missing(owner, field, object)),
        Some(Value::String(text)) => Ok(text),
        Some(other) => Err(format!(
            "{owner}.{field} must be a string, got {}",
            describe_value(other)
        )),
    }
}

/// The required `Body`: a string, or `null` for none.
fn body_field<'a>(object: &'a Map<String, Value>, owner: &str) -> Result<Option<&'a str>, String> {
    match object.get("Body") {
        None => Err(format!(
            "{owner} has no Body (it must be present: the body as a string, or null for \
             none): {}",
            quote_str(&Value::Object(object.clone()).to_string())
        )),
        Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(other) => Err(format!(
            "{owner}.Body must be a string (the body's JSON as text) or null, got {}",
            describe_value(other)
        )),
    }
}

/// Checks that the answer's body still holds every unknown field, unchanged.
fn keeps(owner: &str, body: Option<&str>, kept: &[Kept]) -> Result<(), String> {
    if kept.is_empty() {
        return Ok(());
    }
    let Some(text) = body else {
        return Err(format!(
            "{owner}.Body is null: the body, and the unknown fields sent in it, were dropped"
        ));
    };
    let value: Value = serde_json::from_str(text).map_err(|e| {
        format!(
            "{owner}.Body is not JSON any more ({e}): {}",
            quote_str(text)
        )
    })?;
    let problems: Vec<String> = kept
        .iter()
        .filter_map(|k| match value.pointer(k.pointer) {
            None => Some(format!(
                "dropped the unknown field {} (sent {})",
                k.field, k.value
            )),
            Some(got) if *got != k.value => Some(format!(
                "changed the unknown field {} from {} to {}",
                k.field,
                k.value,
                quote_json(got)
            )),
            Some(_) => None,
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{}; {owner}.Body was: {}",
            problems.join("; "),
            quote_str(text)
        ))
    }
}

/// Whether two bodies are the same text or the same JSON.
fn same_body(a: Option<&str>, b: Option<&str>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a == b
                || matches!(
                    (serde_json::from_str::<Value>(a), serde_json::from_str::<Value>(b)),
                    (Ok(a), Ok(b)) if a == b
                )
        }
        _ => false,
    }
}

/// How the body changed, given that it did.
fn body_change(got: Option<&str>, sent: Option<&str>) -> &'static str {
    match (got, sent) {
        (None, _) => "body dropped",
        (Some(_), None) => "body added",
        (Some(_), Some(_)) => "body rewritten",
    }
}

fn describe(changes: &[&str]) -> String {
    if changes.is_empty() {
        "unchanged".to_owned()
    } else {
        changes.join(", ")
    }
}

/// `an object: {...}`, `a number: 2`, for messages about a field of the wrong type.
fn describe_value(value: &Value) -> String {
    let kind = match value {
        Value::Null => return "null".to_owned(),
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    format!("{kind}: {}", quote_json(value))
}

/// Up to [`QUOTE_CHARS`] characters of a body, control characters escaped.
fn quote(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        "(empty body)".to_owned()
    } else {
        quote_str(&String::from_utf8_lossy(bytes))
    }
}

fn quote_json(value: &Value) -> String {
    quote_str(&value.to_string())
}

fn quote_str(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    for c in chars.by_ref().take(QUOTE_CHARS) {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

/// `0.4 ms`, `12 ms`.
fn millis(elapsed: Duration) -> String {
    if elapsed < Duration::from_millis(10) {
        format!("{:.1} ms", elapsed.as_secs_f64() * 1000.0)
    } else {
        format!("{} ms", elapsed.as_millis())
    }
}

/// `300 ms`, `10 s`.
fn human(duration: Duration) -> String {
    if duration.subsec_nanos() == 0 && duration.as_secs() > 0 {
        format!("{} s", duration.as_secs())
    } else {
        format!("{} ms", duration.as_millis())
    }
}

// ---------------------------------------------------------------------------------------
// Sending calls.

/// Where calls go, resolved from the adapter URL.
struct Target {
    /// The URL as given, for messages.
    url: String,
    /// The socket to connect to.
    address: Address,
    /// The request target: the URL's path and query, or `/` over a unix socket.
    uri: Uri,
    /// The `Host` header.
    host: HeaderValue,
}

/// Why a call got no answer.
struct CallError {
    /// What happened, for the report.
    message: String,
    /// Whether it ran out of time (rather than failing outright).
    timed_out: bool,
}

impl Target {
    /// Resolves an adapter URL, or says why it cannot be used.
    fn parse(url: &str) -> Result<Target, String> {
        let bad = |reason: &dyn fmt::Display| format!("bad adapter URL {url:?}: {reason}");
        let (address, path, host) = match AdapterUrl::parse(url).map_err(|e| bad(&e))? {
            AdapterUrl::Tcp { https: true, .. } => {
                return Err(bad(
                    &"https adapters are not supported; use http:// or unix://",
                ));
            }
            AdapterUrl::Tcp {
                host,
                port,
                path_and_query,
                ..
            } => {
                let authority = if host.contains(':') {
                    format!("[{host}]:{port}")
                } else {
                    format!("{host}:{port}")
                };
                (Address::Tcp { host, port }, path_and_query, authority)
            }
            AdapterUrl::Unix { socket } => (
                Address::Unix(socket),
                "/".to_owned(),
                "localhost".to_owned(),
            ),
        };
        Ok(Target {
            url: url.to_owned(),
            address,
            uri: path.parse().map_err(|e| bad(&e))?,
            host: HeaderValue::from_str(&host).map_err(|e| bad(&e))?,
        })
    }

    /// POSTs `body` on a fresh connection and reads the whole answer, all within `timeout`.
    async fn send(&self, body: &[u8], timeout: Duration) -> Result<Answer, CallError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let fail = |message| CallError {
            message,
            timed_out: false,
        };
        let io = match tokio::time::timeout_at(deadline, connect(&self.address)).await {
            Err(_) => {
                return Err(CallError {
                    message: format!(
                        "could not connect to {} within {}",
                        self.url,
                        human(timeout)
                    ),
                    timed_out: true,
                });
            }
            Ok(Err(error)) => {
                return Err(fail(format!("cannot connect to {}: {error}", self.url)));
            }
            Ok(Ok(io)) => io,
        };
        let request = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(header::HOST, self.host.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::copy_from_slice(body)))
            .map_err(|e| fail(format!("cannot build the request: {e}")))?;
        match tokio::time::timeout_at(deadline, exchange(io, request)).await {
            Err(_) => Err(CallError {
                message: format!("no answer within {}", human(timeout)),
                timed_out: true,
            }),
            Ok(result) => result.map_err(fail),
        }
    }
}

/// One HTTP/1.1 request and its whole answer on `io`. The connection is driven here, not
/// in a task, so dropping this future (at the deadline) closes it.
async fn exchange(io: BoxedIo, request: Request<Full<Bytes>>) -> Result<Answer, String> {
    let (mut sender, connection) = http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP handshake failed: {}", causes(&e)))?;
    let answer = async move {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("no complete answer: {}", causes(&e)))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| {
                format!(
                    "answered {status} but the body could not be read: {}",
                    causes(e.as_ref())
                )
            })?
            .to_bytes();
        Ok(Answer { status, body })
    };
    tokio::pin!(connection, answer);
    tokio::select! {
        biased;
        result = &mut answer => result,
        // The connection ended (the adapter closed it, or it broke): whatever it delivered
        // is in the answer's channel, complete or failed.
        _ = &mut connection => answer.await,
    }
}

/// An error and its sources, `outer: inner: root`.
fn causes(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_are_truncated_and_escaped() {
        assert_eq!(quote(b""), "(empty body)");
        assert_eq!(quote(b"a\nb"), "a\\nb");
        let long = "x".repeat(500);
        let quoted = quote_str(&long);
        assert_eq!(quoted.chars().count(), QUOTE_CHARS + 1);
        assert!(quoted.ends_with('…'));
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human(Duration::from_secs(10)), "10 s");
        assert_eq!(human(Duration::from_millis(300)), "300 ms");
        assert_eq!(human(Duration::from_millis(1500)), "1500 ms");
        assert_eq!(millis(Duration::from_micros(400)), "0.4 ms");
        assert_eq!(millis(Duration::from_millis(42)), "42 ms");
    }

    #[test]
    fn every_probe_is_a_valid_call_but_the_malformed_ones() {
        let probes = probes();
        assert_eq!(
            probes.iter().map(|p| p.name).collect::<Vec<_>>(),
            CHECKS[..CHECKS.len() - 1]
        );
        for probe in &probes {
            let decoded = powerstrip_protocol::decode_call(&probe.body);
            match probe.expect {
                Expect::Rejection { .. } => assert!(decoded.is_err(), "{}", probe.name),
                _ => assert!(decoded.is_ok(), "{}: {decoded:?}", probe.name),
            }
        }
    }

    #[test]
    fn unknown_fields_are_in_the_bodies_sent() {
        for probe in probes() {
            let (body, kept) = match (&probe.expect, powerstrip_protocol::decode_call(&probe.body))
            {
                (Expect::Pre { kept, .. }, Ok(HookCall::PreHook { client_request })) => {
                    (client_request.body, kept)
                }
                (
                    Expect::Post { kept, .. },
                    Ok(HookCall::PostHook {
                        server_response, ..
                    }),
                ) => (server_response.body, kept),
                _ => continue,
            };
            if kept.is_empty() {
                continue;
            }
            let body: Value = serde_json::from_str(&body.unwrap()).unwrap();
            for k in kept {
                assert_eq!(body.pointer(k.pointer), Some(&k.value), "{}", probe.name);
            }
            assert!(keeps("X", Some(&body.to_string()), kept).is_ok());
            let dropped = keeps("X", Some("{}"), kept).unwrap_err();
            assert!(
                dropped.contains("dropped the unknown field XConformance"),
                "{dropped}"
            );
        }
    }

    #[test]
    fn bad_urls_are_explained() {
        let err = Target::parse("ftp://x").err().unwrap();
        assert!(err.starts_with("bad adapter URL \"ftp://x\""), "{err}");
        let err = Target::parse("https://x/hook").err().unwrap();
        assert!(err.contains("https adapters are not supported"), "{err}");
        let target = Target::parse("http://[::1]:9000/a?b=c").ok().unwrap();
        assert_eq!(target.host, "[::1]:9000");
        assert_eq!(target.uri, "/a?b=c");
        let target = Target::parse("unix:///run/a.sock").ok().unwrap();
        assert_eq!(target.uri, "/");
    }
}
