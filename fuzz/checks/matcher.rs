//! The `matcher` property, shared by the fuzz target `fuzz/fuzz_targets/matcher.rs` and the
//! regression test `crates/config/tests/fuzz_regressions.rs` (both include this file with
//! `#[path]`).
//!
//! An input is up to three fields separated by the byte `0xFF` (which UTF-8 never contains):
//! a pattern, a method and a path, each read as UTF-8 with invalid bytes replaced. Then:
//!
//! - `Pattern::new` accepts exactly the texts with something on both sides of a space,
//!   less the globs that do not compile, and never a literal one; `matches` never panics;
//! - a literal pattern (none of `*?[]{}\`) matches exactly `"{METHOD} {PATH}"` equal to it,
//!   or, for a path without an API version (`/containers/create`), `"{METHOD} /{PATH}"`;
//! - the method and path escaped with `\` make such a literal pattern, which matches them;
//! - a set of that one pattern (`PatternSet`, which matches patterns with at most one `*`
//!   and no other glob syntax by their literal prefix and suffix) agrees with `matches`;
//! - `"* *"` matches every request (globset's `*` crosses `/` and newlines), and
//!   `"{METHOD} *"` every path with that method.

use std::borrow::Cow;
use std::sync::OnceLock;

use powerstrip_config::{Pattern, PatternError, PatternSet};

/// Separates the pattern, the method and the path in an input.
pub const SEPARATOR: u8 = 0xFF;

/// What makes a pattern a glob rather than a literal.
const GLOB_CHARS: [char; 7] = ['*', '?', '[', ']', '{', '}', '\\'];

/// Checks one input; panics, naming the broken property, when one does not hold.
pub fn check(data: &[u8]) {
    let mut fields = data.split(|&b| b == SEPARATOR).map(String::from_utf8_lossy);
    let pattern = fields.next().unwrap_or_default();
    let method = fields.next().unwrap_or(Cow::Borrowed("POST"));
    let path = fields
        .next()
        .unwrap_or(Cow::Borrowed("/v1.41/containers/create"));

    any_pattern(&pattern, &method, &path);
    wildcards(&method, &path);
    escaped_literal(&method, &path);
}

/// Whatever the pattern: accepted as documented, and matching never panics.
fn any_pattern(pattern: &str, method: &str, path: &str) {
    match Pattern::new(pattern) {
        Ok(compiled) => {
            assert!(is_method_path(pattern), "{pattern:?} accepted");
            assert_eq!(compiled.as_str(), pattern);
            assert_eq!(compiled.to_string(), pattern);
            let hit = compiled.matches(method, path);
            let mut hits = Vec::new();
            PatternSet::new(std::slice::from_ref(&compiled)).matching(method, path, &mut hits);
            assert_eq!(
                !hits.is_empty(),
                hit,
                "the set of {pattern:?} disagrees with the pattern on ({method:?}, {path:?})"
            );
            if is_literal(pattern) {
                assert_eq!(
                    hit,
                    literal_matches(pattern, method, path),
                    "literal {pattern:?} against ({method:?}, {path:?})"
                );
                if let Some((m, p)) = pattern.split_once(' ') {
                    assert!(
                        compiled.matches(m, p),
                        "literal {pattern:?} does not match itself"
                    );
                }
            }
        }
        Err(PatternError::NotMethodPath(text)) => {
            assert_eq!(text, pattern);
            assert!(
                !is_method_path(pattern),
                "{pattern:?} refused as not METHOD PATH"
            );
        }
        Err(PatternError::BadGlob {
            pattern: text,
            reason,
        }) => {
            assert_eq!(text, pattern);
            assert!(is_method_path(pattern));
            assert!(
                !is_literal(pattern),
                "literal {pattern:?} refused: {reason}"
            );
            assert!(!reason.is_empty());
        }
    }
}

/// `* *` matches everything; `{METHOD} *` every path of that method.
fn wildcards(method: &str, path: &str) {
    static ANY: OnceLock<Option<Pattern>> = OnceLock::new();
    let any = ANY.get_or_init(|| Pattern::new("* *").ok());
    assert!(
        any.as_ref().is_some_and(|p| p.matches(method, path)),
        "\"* *\" does not match ({method:?}, {path:?})"
    );

    let pattern = format!("{} *", escape(method));
    let accepted = !method.is_empty() && !method.starts_with(' ');
    match Pattern::new(&pattern) {
        Ok(compiled) => {
            assert!(accepted, "{pattern:?} accepted");
            for p in [path, "", "/", "/v1.41/containers/create"] {
                assert!(
                    compiled.matches(method, p),
                    "{pattern:?} does not match ({method:?}, {p:?})"
                );
            }
        }
        Err(e) => assert!(!accepted, "{pattern:?} refused: {e}"),
    }
}

/// The method and path, escaped, make a literal pattern that matches exactly them.
fn escaped_literal(method: &str, path: &str) {
    let pattern = format!("{} {}", escape(method), escape(path));
    let accepted = !method.is_empty()
        && !method.starts_with(' ')
        && (method.contains(' ') || !path.is_empty());
    let compiled = match Pattern::new(&pattern) {
        Ok(compiled) => compiled,
        Err(e) => {
            assert!(!accepted, "{pattern:?} refused: {e}");
            return;
        }
    };
    assert!(accepted, "{pattern:?} accepted");
    assert!(
        compiled.matches(method, path),
        "{pattern:?} does not match ({method:?}, {path:?})"
    );
    let literal = format!("{method} {path}");
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    let probes = [
        (method.to_owned(), path.to_owned()),
        (method.to_ascii_uppercase(), path.to_owned()),
        (method.to_ascii_lowercase(), path.to_owned()),
        (method.to_owned(), path.to_ascii_uppercase()),
        (method.to_owned(), format!("/{path}")),
        (method.to_owned(), trimmed.to_owned()),
        (method.to_owned(), format!("{path}/x")),
        (method.to_owned(), format!("/v1.41{path}")),
        (format!("{method} "), path.to_owned()),
    ];
    for (m, p) in &probes {
        assert_eq!(
            compiled.matches(m, p),
            literal_matches(&literal, m, p),
            "{pattern:?} (literally {literal:?}) against ({m:?}, {p:?})"
        );
    }
}

/// Something on both sides of the first space.
fn is_method_path(text: &str) -> bool {
    text.split_once(' ')
        .is_some_and(|(m, p)| !m.is_empty() && !p.is_empty())
}

fn is_literal(text: &str) -> bool {
    !text.contains(GLOB_CHARS)
}

/// `text` with every glob character escaped by a backslash.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if GLOB_CHARS.contains(&c) {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// Whether a literal pattern matches a request, as the README documents it.
fn literal_matches(literal: &str, method: &str, path: &str) -> bool {
    literal == format!("{method} {path}")
        || (path.starts_with('/')
            && !has_version_prefix(path)
            && literal == format!("{method} /{path}"))
}

/// `/v` then digits and dots (starting with a digit), then `/` or the end.
fn has_version_prefix(path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/v") else {
        return false;
    };
    let version = rest.split('/').next().unwrap_or_default();
    version.starts_with(|c: char| c.is_ascii_digit())
        && version.chars().all(|c| c.is_ascii_digit() || c == '.')
}
