//! What an operator sees: whole files in, a model or `file:line: message` lines out.

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use crate::*;

const TOML_EXAMPLE: &str = r#"version = 1                      # optional

[adapters]
flocker = "http://127.0.0.1:9000/flocker-adapter"            # HTTP adapter, defaults
weave   = { url = "http://weave/extension", timeout = "2s", failure = "fail" }
policy  = { builtin = "image-policy", allow = ["busybox:*"] } # in-process; its options
sock    = "unix:///run/adapter.sock"

[[endpoints]]
match = "POST /*/containers/create"
pre   = ["flocker", "weave", "policy"]

[[endpoints]]
match = "POST /*/containers/*/start"
post  = ["weave"]
"#;

const YAML_EXAMPLE: &str = r#"version: 1
endpoints:
  "POST /*/containers/create":
    pre: [flocker, weave]
  "POST /*/containers/*/start":
    post: [weave]
adapters:
  weave: http://weave/extension
  flocker: http://flocker/flocker-adapter
"#;

/// The errors, one `file:line: message` string each.
fn errors(text: &str, format: Format) -> Vec<String> {
    let origin = match format {
        Format::Toml => "adapters.toml",
        Format::Yaml => "adapters.yml",
    };
    match parse(text, origin, format) {
        Ok(config) => panic!("expected errors, got {config:?}"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

fn toml_errors(text: &str) -> Vec<String> {
    errors(text, Format::Toml)
}

fn yaml_errors(text: &str) -> Vec<String> {
    errors(text, Format::Yaml)
}

/// Endpoints as (pattern, pre, post, line), adapters as (name, url, line): easy to compare.
#[allow(clippy::type_complexity)]
fn summary(
    config: &Config,
) -> (
    Vec<(String, Vec<String>, Vec<String>)>,
    Vec<(String, String)>,
) {
    let endpoints = config
        .endpoints
        .iter()
        .map(|e| (e.pattern.to_string(), e.pre.clone(), e.post.clone()))
        .collect();
    let adapters = config
        .adapters
        .iter()
        .map(|a| {
            let kind = match &a.kind {
                AdapterKind::Http { url } => url.to_string(),
                AdapterKind::Builtin { builtin, .. } => format!("builtin:{builtin}"),
            };
            (a.name.clone(), kind)
        })
        .collect();
    (endpoints, adapters)
}

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn toml_example_loads() {
    let config = parse(TOML_EXAMPLE, "adapters.toml", Format::Toml).unwrap();
    assert_eq!(config.origin, "adapters.toml");
    let (endpoints, adapters) = summary(&config);
    assert_eq!(
        endpoints,
        [
            (
                "POST /*/containers/create".into(),
                strings(&["flocker", "weave", "policy"]),
                vec![]
            ),
            (
                "POST /*/containers/*/start".into(),
                vec![],
                strings(&["weave"])
            ),
        ]
    );
    assert_eq!(
        config.endpoints.iter().map(|e| e.line).collect::<Vec<_>>(),
        [10, 14]
    );
    // File order, not alphabetical.
    assert_eq!(
        adapters,
        [
            (
                "flocker".into(),
                "http://127.0.0.1:9000/flocker-adapter".into()
            ),
            ("weave".into(), "http://weave/extension".into()),
            ("policy".into(), "builtin:image-policy".into()),
            ("sock".into(), "unix:///run/adapter.sock".into()),
        ]
    );
    assert_eq!(
        config.adapters.iter().map(|a| a.line).collect::<Vec<_>>(),
        [4, 5, 6, 7]
    );

    let flocker = config.adapter("flocker").unwrap();
    assert_eq!(
        (flocker.timeout, flocker.failure),
        (DEFAULT_ADAPTER_TIMEOUT, FailurePolicy::Fail)
    );
    let weave = config.adapter("weave").unwrap();
    assert_eq!(
        (weave.timeout, weave.failure),
        (Duration::from_secs(2), FailurePolicy::Fail)
    );
    let AdapterKind::Builtin { builtin, options } = &config.adapter("policy").unwrap().kind else {
        panic!("policy is a builtin");
    };
    assert_eq!(builtin, "image-policy");
    assert_eq!(json!(options), json!({"allow": ["busybox:*"]}));
    assert!(config.adapter("nope").is_none());
}

#[test]
fn yaml_and_toml_load_to_the_same_model() {
    let yaml = parse(YAML_EXAMPLE, "adapters.yml", Format::Yaml).unwrap();
    let toml = parse(
        r#"
version = 1
[adapters]
weave = "http://weave/extension"
flocker = "http://flocker/flocker-adapter"

[[endpoints]]
match = "POST /*/containers/create"
pre = ["flocker", "weave"]

[[endpoints]]
match = "POST /*/containers/*/start"
post = ["weave"]
"#,
        "adapters.toml",
        Format::Toml,
    )
    .unwrap();
    assert_eq!(summary(&yaml), summary(&toml));
    let (endpoints, adapters) = summary(&yaml);
    assert_eq!(endpoints[0].0, "POST /*/containers/create");
    assert_eq!(adapters[0].0, "weave");
    assert_eq!(
        yaml.endpoints.iter().map(|e| e.line).collect::<Vec<_>>(),
        [3, 5]
    );
    assert_eq!(
        yaml.adapters.iter().map(|a| a.line).collect::<Vec<_>>(),
        [8, 9]
    );
}

#[test]
fn yaml_adapter_tables_have_the_toml_keys() {
    let config = parse(
        r#"
endpoints:
  "* *":
    pre: [policy, weave]
adapters:
  policy: {builtin: image-policy, allow: ["busybox:*"], max: 3, strict: true, failure: ignore}
  weave:
    url: http://weave/extension
    timeout: 500ms
"#,
        "adapters.yml",
        Format::Yaml,
    )
    .unwrap();
    let policy = config.adapter("policy").unwrap();
    assert_eq!(policy.failure, FailurePolicy::Ignore);
    let AdapterKind::Builtin { options, .. } = &policy.kind else {
        panic!("policy is a builtin");
    };
    assert_eq!(
        json!(options),
        json!({"allow": ["busybox:*"], "max": 3, "strict": true})
    );
    assert_eq!(
        config.adapter("weave").unwrap().timeout,
        Duration::from_millis(500)
    );
}

#[test]
fn several_matching_endpoints_come_back_in_file_order() {
    let config = parse(
        r#"
[adapters]
a = "http://a/"

[[endpoints]]
match = "* *"
pre = ["a"]

[[endpoints]]
match = "POST /*/containers/*/start"
post = ["a"]

[[endpoints]]
match = "POST /v1*/containers/*"
pre = []

[[endpoints]]
match = "GET /*"
pre = []
"#,
        "adapters.toml",
        Format::Toml,
    )
    .unwrap();
    let hooked = |method, path| {
        config
            .matching(method, path)
            .map(|e| e.pattern.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        hooked("POST", "/v1.41/containers/abc/start"),
        [
            "* *",
            "POST /*/containers/*/start",
            "POST /v1*/containers/*"
        ]
    );
    // Unversioned: the version-insisting pattern drops out.
    assert_eq!(
        hooked("POST", "/containers/abc/start"),
        ["* *", "POST /*/containers/*/start"]
    );
    assert_eq!(hooked("GET", "/_ping"), ["* *", "GET /*"]);
    assert!(Config::empty().matching("GET", "/_ping").next().is_none());
}

#[test]
fn an_empty_file_or_version_alone_is_an_empty_config() {
    for (text, format) in [
        ("", Format::Toml),
        ("", Format::Yaml),
        ("version = 1\n", Format::Toml),
        ("version: 1\n", Format::Yaml),
        ("# nothing yet\n", Format::Yaml),
        ("[adapters]\n", Format::Toml),
    ] {
        let config = parse(text, "f", format).unwrap();
        assert!(
            config.endpoints.is_empty() && config.adapters.is_empty(),
            "{text:?}"
        );
    }
    let empty = Config::empty();
    assert_eq!(empty.origin, "<empty>");
    assert!(empty.endpoints.is_empty() && empty.adapters.is_empty());
}

#[test]
fn explicit_empty_chains_are_pass_through() {
    let config = parse(
        "[[endpoints]]\nmatch = \"GET /*\"\npre = []\n",
        "f",
        Format::Toml,
    )
    .unwrap();
    assert!(config.endpoints[0].pre.is_empty() && config.endpoints[0].post.is_empty());
    let config = parse(
        "endpoints:\n  \"GET /*\":\n    post: []\n",
        "f",
        Format::Yaml,
    )
    .unwrap();
    assert_eq!(config.endpoints.len(), 1);
}

#[test]
fn unsupported_version() {
    assert_eq!(
        toml_errors("version = 2\n"),
        ["adapters.toml:1: unsupported version 2 (expected 1)"]
    );
    assert_eq!(
        toml_errors("\nversion = \"1\"\n"),
        [r#"adapters.toml:2: unsupported version "1" (expected 1)"#]
    );
    assert_eq!(
        yaml_errors("version: 1.5\n"),
        ["adapters.yml:1: unsupported version 1.5 (expected 1)"]
    );
}

#[test]
fn unknown_keys_say_where_they_were_found() {
    assert_eq!(
        toml_errors("version = 1\nbogus = 2\n"),
        [
            r#"adapters.toml:2: unknown key "bogus" at top level (expected version, endpoints, adapters, store)"#
        ]
    );
    assert_eq!(
        toml_errors("[[endpoints]]\nmatch = \"POST /*/containers/create\"\npre = []\nbogus = 1\n"),
        [
            r#"adapters.toml:4: unknown key "bogus" in endpoint "POST /*/containers/create" (expected match, pre, post)"#
        ]
    );
    assert_eq!(
        yaml_errors("endpoints:\n  \"POST /*/containers/create\":\n    pre: []\n    bogus: [x]\n"),
        [
            r#"adapters.yml:4: unknown key "bogus" in endpoint "POST /*/containers/create" (expected pre, post)"#
        ]
    );
    assert_eq!(
        toml_errors("[adapters]\nweave = { url = \"http://weave/\", retries = 3 }\n"),
        [
            r#"adapters.toml:2: unknown key "retries" in adapter "weave" (expected url, timeout, failure, unwind, events, ca)"#
        ]
    );
    assert_eq!(
        yaml_errors("adapters:\n  weave:\n    url: http://weave/\n    retries: 3\n"),
        [
            r#"adapters.yml:4: unknown key "retries" in adapter "weave" (expected url, timeout, failure, unwind, events, ca)"#
        ]
    );
}

#[test]
fn an_endpoint_needs_pre_or_post() {
    assert_eq!(
        toml_errors("\n[[endpoints]]\nmatch = \"POST /x\"\n"),
        [r#"adapters.toml:3: endpoint "POST /x" has neither pre nor post"#]
    );
    assert_eq!(
        yaml_errors("endpoints:\n  \"POST /x\":\n  \"POST /y\": {}\n"),
        [
            r#"adapters.yml:2: endpoint "POST /x" has neither pre nor post"#,
            r#"adapters.yml:3: endpoint "POST /y" has neither pre nor post"#,
        ]
    );
    assert_eq!(
        toml_errors("[[endpoints]]\npre = []\n"),
        [r#"adapters.toml:1: endpoint has no match key (expected match = "METHOD PATH")"#]
    );
    assert_eq!(
        toml_errors("[[endpoints]]\nmatch = 3\npre = []\n"),
        [r#"adapters.toml:2: endpoint match must be a string "METHOD PATH", not 3"#]
    );
}

#[test]
fn bad_patterns() {
    assert_eq!(
        toml_errors("[[endpoints]]\nmatch = \"/containers/create\"\npre = []\n"),
        [
            r#"adapters.toml:2: endpoint pattern "/containers/create" must be METHOD PATH, e.g. "POST /*/containers/create""#
        ]
    );
    assert_eq!(
        yaml_errors("endpoints:\n  \"\":\n    pre: []\n"),
        [
            r#"adapters.yml:2: endpoint pattern "" must be METHOD PATH, e.g. "POST /*/containers/create""#
        ]
    );
    assert_eq!(
        yaml_errors("endpoints:\n  \"POST /v[12/containers/create\":\n    pre: []\n"),
        [
            r#"adapters.yml:2: endpoint pattern "POST /v[12/containers/create" is not a valid glob: unclosed character class; missing ']'"#
        ]
    );
}

#[test]
fn chains_name_defined_adapters_only() {
    assert_eq!(
        toml_errors("[[endpoints]]\nmatch = \"POST /x\"\npre = [\n  \"weave\",\n]\n"),
        [
            r#"adapters.toml:4: endpoint "POST /x" uses adapter "weave" in its pre chain, but no adapter "weave" is defined"#
        ]
    );
    assert_eq!(
        yaml_errors("endpoints:\n  \"POST /x\":\n    post:\n      - weave\nadapters: {}\n"),
        [
            r#"adapters.yml:4: endpoint "POST /x" uses adapter "weave" in its post chain, but no adapter "weave" is defined"#
        ]
    );
    // A broken definition is reported once, not again at each use.
    assert_eq!(
        toml_errors(
            "[adapters]\nweave = \"ftp://weave\"\n[[endpoints]]\nmatch = \"POST /x\"\npre = [\"weave\"]\n"
        ),
        [
            r#"adapters.toml:2: adapter "weave": bad URL "ftp://weave": expected http://, https:// or unix:///absolute/path"#
        ]
    );
}

#[test]
fn chains_are_lists_of_strings() {
    assert_eq!(
        toml_errors("[[endpoints]]\nmatch = \"POST /x\"\npre = \"weave\"\n"),
        [
            r#"adapters.toml:3: endpoint "POST /x": pre must be a list of adapter names, not "weave""#
        ]
    );
    assert_eq!(
        yaml_errors("endpoints:\n  \"POST /x\":\n    post: [1]\n"),
        [
            r#"adapters.yml:3: endpoint "POST /x": post must be a list of adapter names, not contain 1"#
        ]
    );
}

#[test]
fn adapter_definitions() {
    assert_eq!(
        toml_errors(
            "[adapters]\na = { timeout = \"1s\" }\nb = { url = \"http://b/\", builtin = \"x\" }\nc = 5\n"
        ),
        [
            r#"adapters.toml:2: adapter "a" has neither url nor builtin"#,
            r#"adapters.toml:3: adapter "b" has both url and builtin (expected exactly one)"#,
            r#"adapters.toml:4: adapter "c" must be a URL string or a table with url or builtin, not 5"#,
        ]
    );
    assert_eq!(
        toml_errors(
            "[adapters]\na = \"http://a:99999/\"\nb = \"unix://relative.sock\"\nc = { url = 5 }\nd = { builtin = true }\n"
        ),
        [
            r#"adapters.toml:2: adapter "a": bad URL "http://a:99999/": invalid port "99999""#,
            r#"adapters.toml:3: adapter "b": bad URL "unix://relative.sock": a unix socket URL needs an absolute path, e.g. unix:///run/adapter.sock"#,
            r#"adapters.toml:4: adapter "c": url must be a string, not 5"#,
            r#"adapters.toml:5: adapter "d": builtin must be a string, not true"#,
        ]
    );
}

#[test]
fn timeouts_and_failure_policies() {
    assert_eq!(
        toml_errors(
            "[adapters.a]\nurl = \"http://a/\"\ntimeout = \"0s\"\n\n[adapters.b]\nurl = \"http://b/\"\ntimeout = \"soon\"\n\n[adapters.c]\nurl = \"http://c/\"\ntimeout = 5\nfailure = \"maybe\"\n"
        ),
        [
            r#"adapters.toml:3: adapter "a": timeout must be greater than zero"#,
            r#"adapters.toml:7: adapter "b": bad timeout "soon": expected number at 0"#,
            r#"adapters.toml:11: adapter "c": timeout must be a duration string such as "500ms" or "2s", not 5"#,
            r#"adapters.toml:12: adapter "c": failure must be "fail" or "ignore", not "maybe""#,
        ]
    );
    let config = parse(
        "[adapters]\nb = { builtin = \"x\", timeout = \"250ms\", failure = \"ignore\" }\n",
        "f",
        Format::Toml,
    )
    .unwrap();
    let b = config.adapter("b").unwrap();
    assert_eq!(
        (b.timeout, b.failure),
        (Duration::from_millis(250), FailurePolicy::Ignore)
    );
    let AdapterKind::Builtin { options, .. } = &b.kind else {
        panic!("b is a builtin");
    };
    assert!(
        options.is_empty(),
        "timeout and failure are not options: {options:?}"
    );
}

#[test]
fn every_error_in_a_file_is_reported_in_line_order() {
    let text = r#"version = 3
colour = "blue"

[[endpoints]]
match = "POST"
pre = ["weave"]

[[endpoints]]
match = "POST /*/containers/*/start"
post = ["flocker"]
whatever = true

[adapters]
weave = "gopher://weave"
"#;
    assert_eq!(
        toml_errors(text),
        [
            "adapters.toml:1: unsupported version 3 (expected 1)",
            r#"adapters.toml:2: unknown key "colour" at top level (expected version, endpoints, adapters, store)"#,
            r#"adapters.toml:5: endpoint pattern "POST" must be METHOD PATH, e.g. "POST /*/containers/create""#,
            r#"adapters.toml:10: endpoint "POST /*/containers/*/start" uses adapter "flocker" in its post chain, but no adapter "flocker" is defined"#,
            r#"adapters.toml:11: unknown key "whatever" in endpoint "POST /*/containers/*/start" (expected match, pre, post)"#,
            r#"adapters.toml:14: adapter "weave": bad URL "gopher://weave": expected http://, https:// or unix:///absolute/path"#,
        ]
    );
    let yaml = r#"version: 2
endpoints:
  "POST /*/containers/create":
    pre: [flocker, weave]
  "POST /*/containers/*/start":
    post: [weave]
    extra: 1
adapters:
  weave: http://weave:0/extension
"#;
    assert_eq!(
        yaml_errors(yaml),
        [
            "adapters.yml:1: unsupported version 2 (expected 1)",
            r#"adapters.yml:4: endpoint "POST /*/containers/create" uses adapter "flocker" in its pre chain, but no adapter "flocker" is defined"#,
            r#"adapters.yml:7: unknown key "extra" in endpoint "POST /*/containers/*/start" (expected pre, post)"#,
            r#"adapters.yml:9: adapter "weave": bad URL "http://weave:0/extension": invalid port "0""#,
        ]
    );
}

#[test]
fn wrongly_shaped_sections() {
    assert_eq!(
        toml_errors("adapters = [\"a\"]\nendpoints = { a = 1 }\n"),
        [
            r#"adapters.toml:1: adapters must be a table of name = URL or name = { url = ... }"#,
            r#"adapters.toml:2: endpoints must be an array of tables ([[endpoints]])"#,
        ]
    );
    assert_eq!(
        yaml_errors("endpoints:\n  - \"POST /x\"\n"),
        [r#"adapters.yml:1: endpoints must be a mapping of "METHOD PATH" to pre/post lists"#]
    );
    assert_eq!(
        yaml_errors("endpoints:\n  \"POST /x\": [weave]\n"),
        [
            r#"adapters.yml:2: endpoint "POST /x" must be a mapping with pre and/or post, not a list"#
        ]
    );
}

#[test]
fn syntax_errors_carry_a_line() {
    assert_eq!(
        toml_errors("version = 1\n\n[adapters\nweave = \"http://weave/\"\n"),
        ["adapters.toml:3: unclosed table, expected `]`"]
    );
    assert_eq!(
        toml_errors("[adapters]\na = \"http://a/\"\na = \"http://b/\"\n"),
        ["adapters.toml:3: duplicate key"]
    );
    assert_eq!(
        yaml_errors("endpoints:\n  \"POST /x\":\n    pre: [weave\n  \"POST /y\": {}\n"),
        ["adapters.yml:4: illegal placement of ':' indicator"]
    );
    assert_eq!(
        yaml_errors("adapters:\n  a: http://a/\n  a: http://b/\n"),
        [r#"adapters.yml:3: duplicate key "a" (first on line 2)"#]
    );
}

#[test]
fn a_file_that_is_neither_format_says_where() {
    // Sniffed as YAML (the first line is no TOML), and it is not YAML either.
    let text = "hello there\n: :\n";
    assert_eq!(detect_format(None, text), Format::Yaml);
    let errors = parse(text, "<inline>", detect_format(None, text)).unwrap_err();
    assert_eq!(errors.0.len(), 1);
    assert_eq!(errors.0[0].origin, "<inline>");
    assert!(errors.0[0].line.is_some(), "{errors}");
}

#[test]
fn format_detection() {
    let toml = Some(Path::new("/etc/powerstrip/adapters.toml"));
    let yml = Some(Path::new("adapters.yml"));
    let yaml = Some(Path::new("adapters.YAML"));
    // The extension wins over the content.
    assert_eq!(detect_format(toml, "version: 1\n"), Format::Toml);
    assert_eq!(detect_format(yml, "version = 1\n"), Format::Yaml);
    assert_eq!(detect_format(yaml, "[adapters]\n"), Format::Yaml);
    // Otherwise the first significant line decides.
    let conf = Some(Path::new("adapters.conf"));
    for (text, format) in [
        ("[adapters]\n", Format::Toml),
        ("# comment\n\n[[endpoints]]\n", Format::Toml),
        ("version = 1\n", Format::Toml),
        ("adapters.weave = \"http://weave/\"\n", Format::Toml),
        ("\"quoted key\" = 1\n", Format::Toml),
        (YAML_EXAMPLE, Format::Yaml),
        (TOML_EXAMPLE, Format::Toml),
        ("# only\n", Format::Yaml),
        ("", Format::Yaml),
        ("adapters:\n  a: http://a/?x=1\n", Format::Yaml),
        ("a: b = c\n", Format::Yaml),
    ] {
        assert_eq!(detect_format(conf, text), format, "{text:?}");
        assert_eq!(detect_format(None, text), format, "{text:?}");
    }
}

#[test]
fn load_reads_a_file_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("adapters.yml");
    std::fs::write(&path, YAML_EXAMPLE).unwrap();
    let config = load(&path).unwrap();
    assert_eq!(config.origin, path.display().to_string());
    assert_eq!(config.endpoints.len(), 2);

    // No extension: sniffed.
    let path = dir.path().join("adapters");
    std::fs::write(&path, "[adapters]\nweave = \"http://weave/\"\nbogus\n").unwrap();
    let errors = load(&path).unwrap_err();
    let origin = path.display().to_string();
    assert_eq!(errors.0.len(), 1);
    assert_eq!(errors.0[0].origin, origin);
    assert_eq!(errors.0[0].line, Some(3));
    assert!(
        errors.to_string().starts_with(&format!("{origin}:3: ")),
        "{errors}"
    );

    let missing = dir.path().join("missing.toml");
    let errors = load(&missing).unwrap_err();
    assert_eq!(errors.0[0].line, None);
    assert!(
        errors
            .to_string()
            .starts_with(&format!("{}: cannot read: ", missing.display())),
        "{errors}"
    );
}

#[test]
fn unwind_events_and_ca_settings() {
    let config = parse(
        r#"
[adapters]
ipam = { url = "http://127.0.0.1:9000/", unwind = true, events = ["die", "destroy", "network:connect", "container:*"] }
plain = "http://127.0.0.1:9001/"
secure = { url = "https://adapters.local:9443/hook", ca = "/etc/powerstrip/ca.pem" }
local = { builtin = "logger", events = ["die"], bodies = true }
"#,
        "adapters.toml",
        Format::Toml,
    )
    .unwrap();
    let ipam = config.adapter("ipam").unwrap();
    assert!(ipam.unwind);
    let events: Vec<String> = ipam.events.iter().map(ToString::to_string).collect();
    assert_eq!(
        events,
        [
            "container:die",
            "container:destroy",
            "network:connect",
            "container:*"
        ]
    );
    assert!(ipam.events[3].matches("container", "exec_start: sh -c true"));
    assert!(ipam.events[0].matches("container", "die"));
    assert!(!ipam.events[0].matches("network", "die"));
    let plain = config.adapter("plain").unwrap();
    assert!(!plain.unwind && plain.events.is_empty() && plain.ca.is_none());
    assert_eq!(
        config.adapter("secure").unwrap().ca.as_deref(),
        Some(std::path::Path::new("/etc/powerstrip/ca.pem"))
    );
    let local = config.adapter("local").unwrap();
    assert_eq!(local.events.len(), 1);
    match &local.kind {
        AdapterKind::Builtin { options, .. } => {
            assert_eq!(
                options.keys().collect::<Vec<_>>(),
                ["bodies"],
                "events is not an option"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_unwind_events_and_ca_settings_are_named() {
    assert_eq!(
        toml_errors(
            "[adapters]\na = { url = \"http://x/\", unwind = \"yes\" }\nb = { url = \"http://x/\", events = \"die\" }\nc = { url = \"http://x/\", events = [\"explode:now\", \"\"] }\nd = { url = \"http://x/\", ca = \"/ca.pem\" }\n"
        ),
        [
            "adapters.toml:2: adapter \"a\": unwind must be true or false, not \"yes\"",
            "adapters.toml:3: adapter \"b\": events must be a list such as [\"die\", \"destroy\"], not \"die\"",
            "adapters.toml:4: adapter \"c\": events: unknown event type \"explode\" (expected one of container, image, volume, network, daemon, plugin, service, node, secret, config)",
            "adapters.toml:4: adapter \"c\": events: bad event action \"\"",
            "adapters.toml:5: adapter \"d\": ca applies only to https:// URLs",
        ]
    );
}

#[test]
fn hosts_that_would_not_read_back_are_refused() {
    assert_eq!(
        toml_errors("[adapters]\na = \"http://a]:b:1/\"\nb = \"http://[not-v6]:1/\"\n"),
        [
            "adapters.toml:2: adapter \"a\": bad URL \"http://a]:b:1/\": invalid host \"a]:b\" (an IPv6 address goes in brackets: http://[::1]:9000/)",
            "adapters.toml:3: adapter \"b\": bad URL \"http://[not-v6]:1/\": \"not-v6\" in brackets is not an IPv6 address",
        ]
    );
    let config = parse(
        "[adapters]\nv6 = \"http://[::1]:9000/hook\"\n",
        "adapters.toml",
        Format::Toml,
    )
    .unwrap();
    let url = match &config.adapter("v6").unwrap().kind {
        AdapterKind::Http { url } => url.to_string(),
        other => panic!("{other:?}"),
    };
    assert_eq!(url, "http://[::1]:9000/hook");
}

#[test]
fn the_store_defaults_to_the_embedded_file() {
    let config = parse("version = 1\n", "<t>", Format::Toml).unwrap();
    assert_eq!(config.store, StoreSection::default());
    assert_eq!(config.store.backend, StoreBackend::Embedded { path: None });
    let config = parse(
        "[store]\nbackend = \"embedded\"\npath = \"/srv/state.redb\"\ntimeout = \"2s\"\n",
        "<t>",
        Format::Toml,
    )
    .unwrap();
    assert_eq!(
        config.store.backend,
        StoreBackend::Embedded {
            path: Some("/srv/state.redb".into())
        }
    );
    assert_eq!(config.store.timeout, Some(Duration::from_secs(2)));
    assert_eq!(config.store.line, 1);
}

#[test]
fn an_etcd_store_reads_every_setting() {
    let config = parse(
        r#"[store]
backend = "etcd"
endpoints = ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]
prefix = "/powerstrip/prod/"
ca = "ca.pem"
cert = "client.pem"
key = "client-key.pem"
user = "powerstrip"
password = "secret"
"#,
        "<t>",
        Format::Toml,
    )
    .unwrap();
    assert_eq!(
        config.store.backend,
        StoreBackend::Etcd {
            endpoints: vec![
                "https://10.0.0.1:2379".into(),
                "https://10.0.0.2:2379".into()
            ],
            prefix: "/powerstrip/prod/".into(),
            ca: Some("ca.pem".into()),
            identity: Some(("client.pem".into(), "client-key.pem".into())),
            user: Some(("powerstrip".into(), "secret".into())),
        }
    );
    let yaml = parse(
        "store:\n  backend: etcd\n  endpoints: [\"http://127.0.0.1:2379\"]\n",
        "<t>",
        Format::Yaml,
    )
    .unwrap();
    assert!(matches!(
        yaml.store.backend,
        StoreBackend::Etcd { ref prefix, .. } if prefix == DEFAULT_ETCD_PREFIX
    ));
}

#[test]
fn a_bad_store_section_names_file_line_and_problem() {
    assert_eq!(
        toml_errors("[store]\nbackend = \"zookeeper\"\n"),
        ["adapters.toml:2: store: backend must be \"embedded\" or \"etcd\", not \"zookeeper\""]
    );
    assert_eq!(
        toml_errors("[store]\nbackend = \"etcd\"\n"),
        ["adapters.toml:1: store: the etcd backend needs endpoints = [\"http://HOST:2379\", ...]"]
    );
    assert_eq!(
        toml_errors(
            "[store]\nbackend = \"etcd\"\nendpoints = [\"10.0.0.1:2379\"]\nuser = \"u\"\ntimeout = \"soon\"\n"
        ),
        [
            "adapters.toml:1: store: user and password go together",
            "adapters.toml:3: store: endpoint \"10.0.0.1:2379\" must be http://HOST:PORT or https://HOST:PORT",
            "adapters.toml:5: store: bad timeout \"soon\": expected number at 0",
        ]
    );
    assert_eq!(
        toml_errors("[store]\npath = \"/x\"\nendpoints = []\n"),
        [
            "adapters.toml:3: store: unknown key \"endpoints\" for the embedded backend (expected backend, path, timeout)"
        ]
    );
}
