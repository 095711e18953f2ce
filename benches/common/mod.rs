//! What the criterion benches share: a null adapter, configurations with N endpoint
//! patterns, and realistic Docker documents.
// Each bench includes this module and uses only part of it.
#![allow(dead_code)]

use powerstrip_adapter::Adapter;
use powerstrip_adapter::builtin::Builtin;
use powerstrip_config::{Config, Format};
use powerstrip_core::{Builtins, ChainOptions, Chains};

/// The body `docker create` (client 28.2) sent for
/// `docker create --name bench-capture -e … -l … -v /srv/data:/data:ro -p 127.0.0.1:8080:80
///  --restart unless-stopped --memory 256m -w /app busybox:local httpd -f -p 80`.
pub const CONTAINER_CREATE: &str = include_str!("../data/container_create.json");

/// dockerd 20.10's answer to `GET /v1.41/version`.
pub const VERSION: &str = include_str!("../data/version.json");

/// An adapter with the trait's default methods: it passes everything through.
pub struct Null;

impl Adapter for Null {}

/// Real Docker endpoint patterns, hooked the way adapters hook them; beyond these,
/// [`patterns`] makes up plugin endpoints so that every pattern is distinct.
const REAL: [&str; 10] = [
    "POST /*/containers/create",
    "POST /*/containers/*/start",
    "POST /*/containers/*/stop",
    "DELETE /*/containers/*",
    "POST /*/networks/create",
    "POST /*/networks/*/connect",
    "POST /*/volumes/create",
    "POST /*/images/create",
    "POST /*/exec/*/start",
    "GET /*/containers/*/json",
];

/// `n` distinct endpoint patterns; `POST /*/containers/create` is the last one, so a
/// create request is a hit that only the last pattern takes.
pub fn patterns(n: usize) -> Vec<String> {
    assert!(n >= 1);
    let mut out: Vec<String> = REAL[1..]
        .iter()
        .map(|p| (*p).to_owned())
        .chain((0..).map(|i| format!("POST /*/plugins/plugin-{i}/enable")))
        .take(n - 1)
        .collect();
    out.push(REAL[0].to_owned());
    out
}

/// A native configuration: three builtin `null` adapters, and each pattern hooked with
/// `pre` and `post` chains of `hooks` of them (0 to 3).
pub fn config_text(patterns: &[String], hooks: usize) -> String {
    let mut text = String::from(
        "version = 1\n\n[adapters]\nnull1 = { builtin = \"null\" }\nnull2 = { builtin = \"null\" }\nnull3 = { builtin = \"null\" }\n",
    );
    let chain: Vec<String> = (1..=hooks).map(|i| format!("\"null{i}\"")).collect();
    let chain = chain.join(", ");
    for pattern in patterns {
        text.push_str(&format!(
            "\n[[endpoints]]\nmatch = \"{pattern}\"\npre = [{chain}]\npost = [{chain}]\n"
        ));
    }
    text
}

/// Parses a configuration made by [`config_text`].
pub fn config(patterns: &[String], hooks: usize) -> Config {
    let text = config_text(patterns, hooks);
    match powerstrip_config::parse(&text, "<bench>", Format::Toml) {
        Ok(config) => config,
        Err(errors) => panic!("bench configuration refused: {errors}\n{text}"),
    }
}

/// The chains of a configuration, with `null` registered as an in-process [`Null`].
pub fn chains(config: &Config) -> Chains {
    let mut builtins = Builtins::new();
    builtins.register(Builtin::from_adapter("null", Null));
    let options = ChainOptions {
        max_answer: powerstrip_core::proxy::DEFAULT_MAX_HOOK_BODY,
    };
    // The in-process null adapter needs no store: an in-memory one for the context.
    let ctx = powerstrip_adapter::Context::in_memory();
    match Chains::build(config, &builtins, options, &ctx) {
        Ok(chains) => chains,
        Err(errors) => panic!("bench chains refused: {errors}"),
    }
}
