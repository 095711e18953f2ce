//! The `config_parse` property, shared by the fuzz target `fuzz/fuzz_targets/config_parse.rs`
//! and the regression test `crates/config/tests/fuzz_regressions.rs` (both include this file
//! with `#[path]`): whatever the text, in either format, parsing never panics and gives
//! either a model whose invariants hold or errors an operator can read, one per line, each
//! naming the file and a line that exists.

use powerstrip_config::{
    AdapterKind, AdapterUrl, Config, ConfigErrors, Format, Pattern, detect_format, parse,
};

/// The origin passed to `parse`; every message must start with it.
pub const ORIGIN: &str = "<fuzz>";

/// Requests every configuration that parses is matched against, besides those its own
/// patterns spell.
const PROBES: &[(&str, &str)] = &[
    ("POST", "/v1.41/containers/create"),
    ("POST", "/containers/create"),
    ("POST", "/v1.16/containers/abc/start"),
    ("GET", "/_ping"),
    ("DELETE", "/containers/abc"),
    ("GET", "/"),
    ("", ""),
];

/// How many of a configuration's own patterns are also used as requests (bounds the work
/// on inputs with hundreds of endpoints).
const OWN_PROBES: usize = 16;

/// Checks one input; panics, naming the broken property, when one does not hold.
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = detect_format(None, text);
    for format in [Format::Toml, Format::Yaml] {
        match parse(text, ORIGIN, format) {
            Ok(config) => check_config(&config, text, format),
            Err(errors) => check_errors(&errors, text, format),
        }
    }
}

/// The highest line number a message may name: the line after the last, counting every
/// character some reader takes for a line break (so CR-only files are not held against the
/// parser). One past the last line because the YAML scanner places the end of the stream
/// there when the text does not end with a newline (`[` fails on line 2).
fn last_line(text: &str) -> usize {
    2 + text
        .chars()
        .filter(|c| matches!(c, '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}'))
        .count()
}

fn check_errors(errors: &ConfigErrors, text: &str, format: Format) {
    assert!(
        !errors.0.is_empty(),
        "{format:?}: parse failed with an empty error list"
    );
    let shown = errors.to_string();
    let lines: Vec<&str> = shown.split('\n').collect();
    assert_eq!(
        lines.len(),
        errors.0.len(),
        "{format:?}: the errors do not print one per line: {shown:?}"
    );
    for line in &lines {
        assert!(
            line.starts_with(&format!("{ORIGIN}:")),
            "{format:?}: an error line does not start with {ORIGIN:?}: {line:?} (all: {shown:?})"
        );
        assert!(
            !line.contains('\r'),
            "{format:?}: an error line contains a carriage return: {line:?}"
        );
    }
    let last = last_line(text);
    for error in &errors.0 {
        assert_eq!(error.origin, ORIGIN, "{format:?}: {error}");
        assert!(
            !error.message.trim().is_empty(),
            "{format:?}: an error without a message: {error:?}"
        );
        if let Some(line) = error.line {
            assert!(
                (1..=last).contains(&line),
                "{format:?}: error names line {line}, the text has lines 1..={last}: {error}"
            );
        }
    }
}

fn check_config(config: &Config, text: &str, format: Format) {
    assert_eq!(config.origin, ORIGIN);
    let last = last_line(text);

    for (i, adapter) in config.adapters.iter().enumerate() {
        assert!(
            config.adapters[..i].iter().all(|a| a.name != adapter.name),
            "{format:?}: adapter {:?} defined twice",
            adapter.name
        );
        assert!(
            !adapter.timeout.is_zero(),
            "{format:?}: adapter {:?} has a zero timeout",
            adapter.name
        );
        assert!(
            (1..=last).contains(&adapter.line),
            "{format:?}: adapter {:?} on line {}, the text has lines 1..={last}",
            adapter.name,
            adapter.line
        );
        if let AdapterKind::Http { url } = &adapter.kind {
            // The URL as logs and messages show it names the same adapter.
            let shown = url.to_string();
            assert_eq!(
                AdapterUrl::parse(&shown).as_ref(),
                Ok(url),
                "{format:?}: adapter {:?}: its URL shown as {shown:?} reads back differently",
                adapter.name
            );
        }
    }

    for endpoint in &config.endpoints {
        let text = endpoint.pattern.as_str();
        assert!(
            (1..=last).contains(&endpoint.line),
            "{format:?}: endpoint {text:?} on line {}, the text has lines 1..={last}",
            endpoint.line
        );
        let again = Pattern::new(text).unwrap_or_else(|e| {
            panic!("{format:?}: validated pattern {text:?} does not compile again: {e}")
        });
        assert_eq!(again.as_str(), text);
        for name in endpoint.pre.iter().chain(&endpoint.post) {
            assert!(
                config.adapter(name).is_some(),
                "{format:?}: endpoint {text:?} names undefined adapter {name:?}"
            );
        }
        if let Some((method, path)) = text.split_once(' ')
            && !text.contains(['*', '?', '[', ']', '{', '}', '\\'])
        {
            assert!(
                endpoint.pattern.matches(method, path),
                "{format:?}: literal pattern {text:?} does not match itself"
            );
        }
    }

    // `matching` is exactly the endpoints whose own pattern matches, in file order; a
    // pattern compiled again from its text matches the same requests.
    let recompiled: Vec<(usize, Pattern)> = config
        .endpoints
        .iter()
        .take(OWN_PROBES)
        .enumerate()
        .filter_map(|(i, e)| Some((i, Pattern::new(e.pattern.as_str()).ok()?)))
        .collect();
    let own = config
        .endpoints
        .iter()
        .take(OWN_PROBES)
        .filter_map(|e| e.pattern.as_str().split_once(' '));
    for (method, path) in PROBES.iter().copied().chain(own) {
        let position = |e: &powerstrip_config::Endpoint| {
            config
                .endpoints
                .iter()
                .position(|x| std::ptr::eq(x, e))
                .unwrap_or(usize::MAX)
        };
        let matched: Vec<usize> = config.matching(method, path).map(position).collect();
        let expected: Vec<usize> = config
            .endpoints
            .iter()
            .enumerate()
            .filter(|(_, e)| e.pattern.matches(method, path))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(
            matched, expected,
            "{format:?}: matching({method:?}, {path:?}) disagrees with the patterns"
        );
        for (i, again) in &recompiled {
            assert_eq!(
                again.matches(method, path),
                expected.contains(i),
                "{format:?}: pattern {:?} compiled twice matches ({method:?}, {path:?}) differently",
                again.as_str()
            );
        }
    }
}
