//! The conformance suite judges adapters right: a correct one passes everything, and each
//! kind of broken one fails exactly the checks it should, with a message saying why.

use std::time::Duration;

use powerstrip_protocol::{ClientRequest, HookCall};
use powerstrip_testkit::conformance::{CHECKS, CheckResult, Options, Report, check};
use powerstrip_testkit::{AdapterReply, FakeAdapter, FakeDocker, FakeResponse, Responder};
use serde_json::{Value, json};

const PRE_HOOK_CHECKS: [&str; 4] = [
    "pre-hook on container create",
    "pre-hook with a null body",
    "pre-hook keeps unknown fields",
    "pre-hook with a withheld body",
];

/// Every check that sends a valid hook call (pre and post).
const HOOK_CHECKS: [&str; 8] = [
    "pre-hook on container create",
    "pre-hook with a null body",
    "pre-hook keeps unknown fields",
    "pre-hook with a withheld body",
    "post-hook on container create",
    "post-hook with a null body",
    "post-hook keeps unknown fields",
    "post-hook on a Docker error",
];

const REJECTION_CHECKS: [&str; 2] = [
    "rejects a call that is not JSON",
    "rejects PowerstripProtocolVersion 2",
];

const IN_TIME: &str = "answers within the timeout";

/// Generous for a local fake: only the hang test relies on the timeout.
fn options() -> Options {
    Options {
        timeout: Duration::from_secs(2),
    }
}

async fn run(adapter: &FakeAdapter) -> Report {
    check(&adapter.url(), &options()).await
}

fn failed(report: &Report) -> Vec<&'static str> {
    report
        .checks
        .iter()
        .filter(|c| !c.passed())
        .map(|c| c.name)
        .collect()
}

fn result<'a>(report: &'a Report, name: &str) -> &'a CheckResult {
    report
        .find(name)
        .unwrap_or_else(|| panic!("no check {name:?} in\n{report}"))
}

/// The problem a failed check reports.
fn problem<'a>(report: &'a Report, name: &str) -> &'a str {
    match &result(report, name).outcome {
        Err(problem) => problem,
        Ok(detail) => panic!("{name:?} passed ({detail}) in\n{report}"),
    }
}

/// What a passed check reports.
fn detail<'a>(report: &'a Report, name: &str) -> &'a str {
    match &result(report, name).outcome {
        Ok(detail) => detail,
        Err(problem) => panic!("{name:?} failed ({problem}) in\n{report}"),
    }
}

fn assert_failed_exactly(report: &Report, expected: &[&str]) {
    assert_eq!(failed(report), expected, "\n{report}");
    assert_eq!(report.checks.len(), CHECKS.len());
    assert!(!report.is_success());
}

#[tokio::test]
async fn the_echo_adapter_passes_every_check() {
    let adapter = FakeAdapter::echo().await;
    let report = run(&adapter).await;

    assert!(report.is_success(), "{report}");
    assert_eq!(report.failed(), 0);
    assert_eq!(report.passed(), CHECKS.len());
    assert_eq!(
        report.checks.iter().map(|c| c.name).collect::<Vec<_>>(),
        CHECKS
    );
    let text = report.to_string();
    assert!(text.ends_with("11 passed, 0 failed"), "{text}");
    assert!(
        text.lines()
            .take(CHECKS.len())
            .all(|l| l.starts_with("ok    ")),
        "{text}"
    );
    assert!(
        detail(&report, "pre-hook on container create")
            .starts_with("valid ModifiedClientRequest, unchanged (")
    );
    assert!(
        detail(&report, "post-hook on a Docker error")
            .starts_with("valid ModifiedServerResponse, unchanged (")
    );
    assert!(
        detail(&report, IN_TIME).starts_with("every call answered within 2 s; the slowest in ")
    );

    // Each call went out as the proxy sends it, each on its own connection.
    let requests = adapter.requests();
    assert_eq!(requests.len(), 10);
    for request in &requests {
        assert_eq!(request.method, "POST");
        assert_eq!(request.uri, "/hook");
        assert_eq!(request.header("content-type"), Some("application/json"));
    }
    assert_eq!(adapter.connections(), 10);
    assert_eq!(adapter.calls().len(), 8);
    assert_eq!(adapter.bad_calls().len(), 2);
    assert_eq!(adapter.bad_calls()[0], "this is not json");
    // The create call is a realistic one.
    let HookCall::PreHook { client_request } = &adapter.calls()[0] else {
        panic!("first call is not a pre-hook: {:?}", adapter.calls()[0]);
    };
    assert_eq!(client_request.method, "POST");
    assert_eq!(
        client_request.request,
        "/v1.41/containers/create?name=conformance"
    );
    let body: Value = serde_json::from_str(client_request.body.as_deref().unwrap()).unwrap();
    assert_eq!(body["Image"], "busybox:local");
    assert_eq!(body["User"], "1000");
    assert_eq!(body["Labels"], json!({}));
}

#[tokio::test]
async fn docker_style_refusals_pass_the_hook_checks_and_malformed_calls_still_get_400() {
    // A behaviour only ever sees decoded calls: FakeAdapter answers bodies that are not a
    // valid call itself, before consulting it, with a Docker-style 400. So an adapter that
    // refuses every hook still rejects malformed calls correctly, and passes everything:
    // the hook checks as refusals (403), the rejection checks with FakeAdapter's own 400.
    // (Before FakeAdapter answered those with 400 text/plain, both rejection checks failed
    // as "not {"message": ...}", for this adapter and the echo one alike.)
    let adapter = FakeAdapter::refuse(403, r#"{"message":"no"}"#).await;
    let report = run(&adapter).await;
    assert!(report.is_success(), "{report}");
    for name in HOOK_CHECKS {
        assert!(
            detail(&report, name).starts_with(r#"refused with 403 Forbidden: "no" ("#),
            "{report}"
        );
    }
    for name in REJECTION_CHECKS {
        assert!(
            detail(&report, name).starts_with("refused with 400 Bad Request: \"fake adapter: "),
            "{report}"
        );
    }
    assert_eq!(adapter.calls().len(), 8);
}

#[tokio::test]
async fn an_adapter_that_drops_unknown_fields_fails_only_the_pre_hook_unknown_fields_check() {
    // Re-serialises only what it knows: the Image.
    let adapter = FakeAdapter::rewrite_pre(|request| {
        let body = request.body.as_deref().map(|body| {
            let value: Value = serde_json::from_str(body).unwrap();
            json!({"Image": value["Image"]}).to_string()
        });
        ClientRequest {
            body,
            ..request.clone()
        }
    })
    .await;
    let report = run(&adapter).await;
    assert_failed_exactly(&report, &["pre-hook keeps unknown fields"]);
    let problem = problem(&report, "pre-hook keeps unknown fields");
    assert!(
        problem.starts_with(
            r#"dropped the unknown field XConformance (sent {"kept":[1,{"deep":null}]}); dropped the unknown field HostConfig.XConformanceNested (sent "x"); ModifiedClientRequest.Body was: {"Image":"busybox:local"}"#
        ),
        "{problem}"
    );
    // Rewriting the body is allowed, and reported.
    assert!(
        detail(&report, "pre-hook on container create")
            .starts_with("valid ModifiedClientRequest, body rewritten ("),
        "{report}"
    );
}

#[tokio::test]
async fn an_adapter_that_changes_unknown_post_fields_fails_that_check() {
    let adapter = FakeAdapter::rewrite_post(|response| {
        let mut response = response.clone();
        if let Some(body) = &response.body {
            let mut value: Value = serde_json::from_str(body).unwrap();
            if value.get("XConformance").is_some() {
                value["XConformance"] = json!({"kept": [1]});
                response.body = Some(value.to_string());
            }
        }
        response
    })
    .await;
    let report = run(&adapter).await;
    assert_failed_exactly(&report, &["post-hook keeps unknown fields"]);
    let problem = problem(&report, "post-hook keeps unknown fields");
    assert!(
        problem.starts_with(
            r#"changed the unknown field XConformance from {"kept":[1,{"deep":null}]} to {"kept":[1]}; ModifiedServerResponse.Body was: "#
        ),
        "{problem}"
    );
}

#[tokio::test]
async fn rewriting_the_query_and_the_response_is_fine() {
    let pre = FakeAdapter::rewrite_pre(|request| ClientRequest {
        request: format!("{}&conformance=1", request.request),
        ..request.clone()
    })
    .await;
    let report = run(&pre).await;
    assert!(report.is_success(), "{report}");
    assert!(
        detail(&report, "pre-hook on container create")
            .starts_with("valid ModifiedClientRequest, query string rewritten ("),
        "{report}"
    );

    // A post-hook may turn a Docker error into a success.
    let post = FakeAdapter::rewrite_post(|response| {
        let mut response = response.clone();
        if response.code == 404 {
            response.code = 200;
            response.body = Some("{}".into());
        }
        response
    })
    .await;
    let report = run(&post).await;
    assert!(report.is_success(), "{report}");
    assert!(
        detail(&report, "post-hook on a Docker error")
            .starts_with("valid ModifiedServerResponse, Code 404 changed to 200, body rewritten ("),
        "{report}"
    );
}

#[tokio::test]
async fn an_adapter_that_answers_version_2_fails_every_hook_check() {
    let adapter = FakeAdapter::start(|call| match call {
        HookCall::PreHook { client_request } => AdapterReply::Json(
            200,
            json!({"PowerstripProtocolVersion": 2, "ModifiedClientRequest": client_request}),
        ),
        HookCall::PostHook {
            server_response, ..
        } => AdapterReply::Json(
            200,
            json!({"PowerstripProtocolVersion": 2, "ModifiedServerResponse": server_response}),
        ),
        other => AdapterReply::pass(other),
    })
    .await;
    let report = run(&adapter).await;
    assert_failed_exactly(&report, &HOOK_CHECKS);
    for name in HOOK_CHECKS {
        assert_eq!(
            problem(&report, name),
            "PowerstripProtocolVersion is 2, expected 1"
        );
    }
}

#[tokio::test]
async fn an_adapter_that_answers_html_with_200_fails_every_check_but_the_rejections() {
    let adapter =
        FakeAdapter::start(|_| AdapterReply::raw(200, "text/html", "<html>\n<b>ok</b></html>"))
            .await;
    let report = run(&adapter).await;
    assert_failed_exactly(&report, &HOOK_CHECKS);
    for name in HOOK_CHECKS {
        let problem = problem(&report, name);
        assert!(
            problem.starts_with("answered 200 but the body is not JSON (")
                && problem.ends_with("): <html>\\n<b>ok</b></html>"),
            "{problem}"
        );
    }
}

#[tokio::test]
async fn an_adapter_that_changes_the_path_fails_the_pre_hook_checks() {
    let adapter = FakeAdapter::rewrite_pre(|request| ClientRequest {
        request: format!("/v1.99{}", request.request.trim_start_matches("/v1.41")),
        ..request.clone()
    })
    .await;
    let report = run(&adapter).await;
    assert_failed_exactly(&report, &PRE_HOOK_CHECKS);
    assert_eq!(
        problem(&report, "pre-hook with a null body"),
        "changed the path from \"/v1.41/containers/json\" to \"/v1.99/containers/json\"; an \
         adapter must not move the request to another endpoint (it may change the query string)"
    );
}

#[tokio::test]
async fn an_adapter_that_changes_the_method_fails_the_pre_hook_checks() {
    let adapter = FakeAdapter::rewrite_pre(|request| ClientRequest {
        method: "PATCH".into(),
        ..request.clone()
    })
    .await;
    let report = run(&adapter).await;
    assert_failed_exactly(&report, &PRE_HOOK_CHECKS);
    assert!(
        problem(&report, "pre-hook on container create")
            .starts_with(r#"changed the Method from "POST" to "PATCH""#),
        "{report}"
    );
}

#[tokio::test]
async fn a_plain_text_refusal_fails_every_check() {
    let adapter = FakeAdapter::refuse(403, "go away").await;
    let report = run(&adapter).await;
    // The rejection checks pass: FakeAdapter answers undecodable calls itself.
    assert_failed_exactly(&report, &HOOK_CHECKS);
    for name in HOOK_CHECKS {
        assert_eq!(
            problem(&report, name),
            "refused with 403 Forbidden but the body is not {\"message\": ...}: go away"
        );
    }
}

#[tokio::test]
async fn a_server_error_is_not_a_refusal_even_docker_style() {
    let adapter = FakeAdapter::refuse(500, r#"{"message":"boom"}"#).await;
    let report = run(&adapter).await;
    assert_failed_exactly(&report, &HOOK_CHECKS);
    assert_eq!(
        problem(&report, "post-hook with a null body"),
        "answered 500 Internal Server Error; a hook answers 200, or refuses with a 4xx and \
         {\"message\": ...}: {\"message\":\"boom\"}"
    );
}

/// A lax adapter, as often written in a scripting language: it parses whatever comes
/// (crashing with a 500 page on what is not JSON), ignores the version and echoes. Served by
/// `FakeDocker` (hyper) on a unix socket, since `FakeAdapter` always rejects bad calls
/// itself.
async fn lax_adapter() -> FakeDocker {
    FakeDocker::builder()
        .route(
            "*",
            "*",
            Responder::with(|request| {
                let Ok(call) = serde_json::from_slice::<Value>(&request.body) else {
                    return FakeResponse::new(500, "text/html", "<html>Traceback</html>");
                };
                let answer = if call["Type"] == "pre-hook" {
                    json!({"PowerstripProtocolVersion": 1,
                           "ModifiedClientRequest": call["ClientRequest"]})
                } else {
                    json!({"PowerstripProtocolVersion": 1,
                           "ModifiedServerResponse": call["ServerResponse"]})
                };
                FakeResponse::json(200, &answer)
            }),
        )
        .start_unix()
        .await
}

#[tokio::test]
async fn a_lax_adapter_on_a_unix_socket_fails_the_rejection_checks() {
    let adapter = lax_adapter().await;
    let url = adapter.address();
    assert!(url.starts_with("unix:///"), "{url}");
    let report = check(&url, &options()).await;
    assert_failed_exactly(&report, &REJECTION_CHECKS);
    assert_eq!(
        problem(&report, "rejects a call that is not JSON"),
        "answered 500 Internal Server Error to a call that is not JSON; it must refuse it with \
         a 4xx (400) and {\"message\": ...}: <html>Traceback</html>"
    );
    assert_eq!(
        problem(&report, "rejects PowerstripProtocolVersion 2"),
        "answered 200 OK to a PowerstripProtocolVersion 2 call; it must refuse it with a 4xx \
         (400) and {\"message\": ...}: {\"PowerstripProtocolVersion\":1,\"ModifiedClientRequest\":\
         {\"Method\":\"GET\",\"Request\":\"/v1.41/containers/json\",\"Body\":null}}"
    );
    // Over a unix socket, hooks are POSTed to `/`, as the proxy does.
    let requests = adapter.requests();
    assert_eq!(requests.len(), 10);
    for request in &requests {
        assert_eq!(
            (request.method.as_str(), request.uri.as_str()),
            ("POST", "/")
        );
        assert_eq!(request.header("content-type"), Some("application/json"));
        assert_eq!(request.header("host"), Some("localhost"));
    }
}

#[tokio::test]
async fn an_empty_message_is_not_a_refusal() {
    let adapter = FakeAdapter::refuse(409, r#"{"message":""}"#).await;
    let report = run(&adapter).await;
    assert_failed_exactly(&report, &HOOK_CHECKS);
    assert_eq!(
        problem(&report, "post-hook on container create"),
        "refused with 409 Conflict but its \"message\" is empty: {\"message\":\"\"}"
    );
}

#[tokio::test]
async fn an_adapter_that_closes_mid_answer_fails_with_the_reason() {
    let adapter = FakeAdapter::start(|call| match call {
        HookCall::PostHook { .. } => AdapterReply::CloseMidAnswer,
        other => AdapterReply::pass(other),
    })
    .await;
    let report = run(&adapter).await;
    let mut expected = HOOK_CHECKS[4..].to_vec();
    expected.push(IN_TIME);
    assert_failed_exactly(&report, &expected);
    let closed = problem(&report, "post-hook on container create");
    assert!(closed.starts_with("no complete answer: "), "{closed}");
    assert!(
        problem(&report, IN_TIME)
            .starts_with("4 of 10 calls got no answer; the first: no complete answer: "),
        "{report}"
    );
}

#[tokio::test]
async fn an_adapter_that_hangs_fails_the_hung_checks_and_the_timeout_check() {
    // Hangs on pre-hooks only, so the test stays fast (3 × 300 ms) and shows that a hang
    // is charged to its own checks, not to the ones after it.
    let adapter = FakeAdapter::start(|call| match call {
        HookCall::PreHook { .. } => AdapterReply::Hang,
        other => AdapterReply::pass(other),
    })
    .await;
    let timeout = Duration::from_millis(300);
    let report = check(&adapter.url(), &Options { timeout }).await;
    let mut expected = PRE_HOOK_CHECKS.to_vec();
    expected.push(IN_TIME);
    assert_failed_exactly(&report, &expected);
    for name in PRE_HOOK_CHECKS {
        assert_eq!(problem(&report, name), "no answer within 300 ms");
        let elapsed = result(&report, name).elapsed;
        assert!(
            elapsed >= timeout && elapsed < timeout * 3,
            "{name}: {elapsed:?}"
        );
    }
    assert_eq!(
        problem(&report, IN_TIME),
        "4 of 10 calls got no answer within 300 ms: pre-hook on container create, pre-hook \
         with a null body, pre-hook keeps unknown fields, pre-hook with a withheld body"
    );
    assert!(result(&report, IN_TIME).elapsed >= timeout);
    assert_eq!(adapter.calls().len(), 8);
}

#[tokio::test]
async fn an_adapter_that_omits_the_body_fails_the_pre_hook_checks() {
    let adapter = FakeAdapter::start(|call| match call {
        HookCall::PreHook { client_request } => AdapterReply::Json(
            200,
            json!({"PowerstripProtocolVersion": 1, "ModifiedClientRequest": {
                "Method": client_request.method, "Request": client_request.request}}),
        ),
        other => AdapterReply::pass(other),
    })
    .await;
    let report = run(&adapter).await;
    assert_failed_exactly(&report, &PRE_HOOK_CHECKS);
    assert_eq!(
        problem(&report, "pre-hook with a null body"),
        "ModifiedClientRequest has no Body (it must be present: the body as a string, or null \
         for none): {\"Method\":\"GET\",\"Request\":\"/v1.41/containers/json?all=1\"}"
    );
}

#[tokio::test]
async fn a_body_given_as_an_object_and_a_bad_code_are_named() {
    let adapter = FakeAdapter::start(|call| match call {
        HookCall::PreHook { client_request } => AdapterReply::Json(
            200,
            json!({"PowerstripProtocolVersion": 1, "ModifiedClientRequest": {
                "Method": client_request.method, "Request": client_request.request,
                "Body": {"Image": "busybox"}}}),
        ),
        HookCall::PostHook {
            server_response, ..
        } => AdapterReply::Json(
            200,
            json!({"PowerstripProtocolVersion": 1, "ModifiedServerResponse": {
                "ContentType": server_response.content_type, "Body": null, "Code": "201"}}),
        ),
        other => AdapterReply::pass(other),
    })
    .await;
    let report = run(&adapter).await;
    assert_failed_exactly(&report, &HOOK_CHECKS);
    assert_eq!(
        problem(&report, "pre-hook with a null body"),
        "ModifiedClientRequest.Body must be a string (the body's JSON as text) or null, got an \
         object: {\"Image\":\"busybox\"}"
    );
    assert_eq!(
        problem(&report, "post-hook with a null body"),
        "ModifiedServerResponse.Code must be an HTTP status from 100 to 599, got a string: \"201\""
    );
}

#[tokio::test]
async fn an_unreachable_adapter_fails_every_check_without_panicking() {
    // A port nothing listens on: bind one, then let it go.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let url = format!("http://127.0.0.1:{port}/hook");
    let report = check(&url, &options()).await;
    assert_failed_exactly(&report, &CHECKS);
    for c in &report.checks[..CHECKS.len() - 1] {
        let problem = c.outcome.as_ref().unwrap_err();
        assert!(
            problem.starts_with(&format!("cannot connect to {url}: ")),
            "{problem}"
        );
    }
    assert!(
        problem(&report, IN_TIME).starts_with(&format!(
            "10 of 10 calls got no answer; the first: cannot connect to {url}: "
        )),
        "{report}"
    );
    assert!(report.to_string().ends_with("0 passed, 11 failed"));

    let dir = tempfile::tempdir().unwrap();
    let url = format!("unix://{}/missing.sock", dir.path().display());
    let report = check(&url, &options()).await;
    assert_failed_exactly(&report, &CHECKS);
    assert!(
        problem(&report, "post-hook on a Docker error")
            .starts_with(&format!("cannot connect to {url}: ")),
        "{report}"
    );
}

#[tokio::test]
async fn an_unusable_url_fails_every_check_with_the_reason() {
    for (url, reason) in [
        (
            "ftp://127.0.0.1/hook",
            "bad adapter URL \"ftp://127.0.0.1/hook\": expected http://",
        ),
        (
            "https://127.0.0.1/hook",
            "bad adapter URL \"https://127.0.0.1/hook\": https adapters are not supported",
        ),
        (
            "unix://relative.sock",
            "bad adapter URL \"unix://relative.sock\": a unix socket URL needs an absolute path",
        ),
    ] {
        let report = check(url, &options()).await;
        assert_failed_exactly(&report, &CHECKS);
        for c in &report.checks {
            let problem = c.outcome.as_ref().unwrap_err();
            assert!(problem.starts_with(reason), "{problem}");
        }
    }
}

#[test]
fn the_report_prints_one_line_per_check_then_the_counts() {
    let report = Report {
        checks: vec![
            CheckResult {
                name: "pre-hook on container create",
                outcome: Ok("valid ModifiedClientRequest, unchanged (1.2 ms)".into()),
                elapsed: Duration::from_millis(1),
            },
            CheckResult {
                name: "pre-hook with a null body",
                outcome: Err("no answer within 300 ms".into()),
                elapsed: Duration::from_millis(300),
            },
        ],
    };
    assert_eq!(
        report.to_string(),
        "ok    pre-hook on container create: valid ModifiedClientRequest, unchanged (1.2 ms)\n\
         FAIL  pre-hook with a null body: no answer within 300 ms\n\
         1 passed, 1 failed"
    );
    assert_eq!((report.passed(), report.failed()), (1, 1));
    assert!(!report.is_success());
    assert!(!Report::default().is_success());
    assert_eq!(Options::default().timeout, Duration::from_secs(10));
}

#[tokio::test]
async fn an_adapter_that_invents_a_body_fails_only_the_withheld_body_check() {
    // Written as if every request had a JSON body: a null one becomes "{}".
    let adapter = FakeAdapter::rewrite_pre(|request| ClientRequest {
        body: Some(request.body.clone().unwrap_or_else(|| "{}".into())),
        ..request.clone()
    })
    .await;
    let report = run(&adapter).await;
    let failed = failed(&report);
    assert!(
        failed.contains(&"pre-hook with a withheld body"),
        "{report}"
    );
    assert_eq!(
        problem(&report, "pre-hook with a withheld body"),
        "answered a Body for a request whose body was withheld (BodyWithheld: it streams to \
         Docker unseen); the Body must stay null"
    );
}
