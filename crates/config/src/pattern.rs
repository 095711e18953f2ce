//! Endpoint patterns: `METHOD PATH` globs, fnmatch-style, matched against `"{METHOD} {PATH}"`.

use std::fmt;

use globset::{Glob, GlobBuilder, GlobMatcher, GlobSet, GlobSetBuilder};

/// Why an endpoint pattern was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// The text is not `METHOD PATH`.
    #[error("endpoint pattern {0:?} must be METHOD PATH, e.g. \"POST /*/containers/create\"")]
    NotMethodPath(String),
    /// The glob does not compile (e.g. an unclosed `[`).
    #[error("endpoint pattern {pattern:?} is not a valid glob: {reason}")]
    BadGlob {
        /// The pattern as written.
        pattern: String,
        /// globset's explanation.
        reason: String,
    },
}

/// A compiled endpoint pattern such as `POST /*/containers/create`.
///
/// `*` matches any run of characters including `/`, `?` one character, `[..]` a class
/// (`[!..]` negated), `\` escapes. Matching is case-sensitive. globset also reads
/// `{a,b}` as alternatives, which fnmatch would take literally; Docker paths have no braces.
#[derive(Clone, Debug)]
pub struct Pattern {
    /// The text as the operator wrote it, for messages and logs.
    text: String,
    /// The glob, for sets of patterns.
    glob: Glob,
    /// The compiled glob.
    matcher: GlobMatcher,
}

impl Pattern {
    /// Compiles `text`, which must be `METHOD PATH` with something on each side of a space.
    pub fn new(text: &str) -> Result<Pattern, PatternError> {
        match text.split_once(' ') {
            Some((method, path)) if !method.is_empty() && !path.is_empty() => {}
            _ => return Err(PatternError::NotMethodPath(text.to_owned())),
        }
        let glob = GlobBuilder::new(text)
            .literal_separator(false)
            .backslash_escape(true)
            .build()
            .map_err(|e| PatternError::BadGlob {
                pattern: text.to_owned(),
                reason: e.kind().to_string(),
            })?;
        Ok(Pattern {
            text: text.to_owned(),
            matcher: glob.compile_matcher(),
            glob,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether a request with this method and path (no query string) is hooked.
    ///
    /// A path without an API version prefix (`/containers/create`) is also tried with an
    /// empty version segment (`//containers/create`), so `POST /*/containers/create` hooks it.
    pub fn matches(&self, method: &str, path: &str) -> bool {
        self.matches_request(&Request::new(method, path))
    }

    pub(crate) fn matches_request(&self, request: &Request) -> bool {
        self.matcher.is_match(&request.as_sent)
            || request
                .unversioned
                .as_ref()
                .is_some_and(|c| self.matcher.is_match(c))
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Several patterns compiled together: one pass over a request finds every pattern that
/// matches it, in the order the patterns were given.
///
/// ```
/// use powerstrip_config::{Pattern, PatternSet};
///
/// let patterns = ["POST /*/containers/create", "GET /*", "* *"].map(|p| Pattern::new(p).unwrap());
/// let set = PatternSet::new(&patterns);
/// let mut hits = Vec::new();
/// set.matching("POST", "/v1.41/containers/create", &mut hits);
/// assert_eq!(hits, [0, 2]);
/// set.matching("POST", "/containers/create", &mut hits);
/// assert_eq!(hits, [0, 2], "unversioned paths are matched too");
/// ```
#[derive(Clone, Debug, Default)]
pub struct PatternSet {
    /// The compiled set; indices are positions in the patterns given.
    set: GlobSet,
    /// The same patterns as literal prefixes and suffixes, when every one of them can be
    /// (at most one `*`, no other glob syntax — `POST /*/containers/create`): matched
    /// without building the request's text or running the glob automaton.
    literals: Option<Vec<Literal>>,
}

impl PatternSet {
    /// Compiles `patterns` together.
    pub fn new(patterns: &[Pattern]) -> PatternSet {
        let mut builder = GlobSetBuilder::new();
        for pattern in patterns {
            builder.add(pattern.glob.clone());
        }
        // Each glob compiled alone already, so together they compile too.
        let set = builder.build().unwrap_or_else(|_| GlobSet::empty());
        let literals = patterns.iter().map(|p| Literal::parse(&p.text)).collect();
        PatternSet { set, literals }
    }

    /// True when the set holds no pattern.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// Fills `hits` with the indices of the patterns matching this request (path without
    /// query string), ascending; the same rules as [`Pattern::matches`].
    pub fn matching(&self, method: &str, path: &str, hits: &mut Vec<usize>) {
        hits.clear();
        if self.set.is_empty() {
            return;
        }
        if let Some(literals) = &self.literals {
            let unversioned = path.starts_with('/') && !has_version_prefix(path);
            for (i, literal) in literals.iter().enumerate() {
                if literal.matches([method, " ", path])
                    || (unversioned && literal.matches([method, " /", path]))
                {
                    hits.push(i);
                }
            }
            return;
        }
        let request = Request::new(method, path);
        self.set.matches_into(request.as_sent.as_str(), hits);
        if let Some(unversioned) = &request.unversioned {
            let mut more = Vec::new();
            self.set.matches_into(unversioned.as_str(), &mut more);
            if !more.is_empty() {
                hits.extend(more);
                hits.sort_unstable();
                hits.dedup();
            }
        }
    }
}

/// A pattern with no glob syntax but at most one `*` (which matches anything, `/`
/// included): the text before it and, when there is one, the text after it.
#[derive(Clone, Debug)]
struct Literal {
    prefix: Box<[u8]>,
    suffix: Option<Box<[u8]>>,
}

impl Literal {
    fn parse(text: &str) -> Option<Literal> {
        if text.contains(['?', '[', ']', '{', '}', '\\']) {
            return None;
        }
        match text.split_once('*') {
            None => Some(Literal {
                prefix: text.as_bytes().into(),
                suffix: None,
            }),
            Some((prefix, suffix)) if !suffix.contains('*') => Some(Literal {
                prefix: prefix.as_bytes().into(),
                suffix: Some(suffix.as_bytes().into()),
            }),
            Some(_) => None,
        }
    }

    /// Whether the text made of `parts` matches.
    fn matches(&self, parts: [&str; 3]) -> bool {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        match &self.suffix {
            None => len == self.prefix.len() && starts_with(parts, &self.prefix),
            Some(suffix) => {
                len >= self.prefix.len() + suffix.len()
                    && starts_with(parts, &self.prefix)
                    && ends_with(parts, suffix)
            }
        }
    }
}

/// Whether the text made of `parts` starts with `literal`.
fn starts_with(parts: [&str; 3], mut literal: &[u8]) -> bool {
    for part in parts {
        let n = part.len().min(literal.len());
        if part.as_bytes()[..n] != literal[..n] {
            return false;
        }
        literal = &literal[n..];
    }
    literal.is_empty()
}

/// Whether the text made of `parts` ends with `literal`.
fn ends_with(parts: [&str; 3], mut literal: &[u8]) -> bool {
    for part in parts.iter().rev() {
        let part = part.as_bytes();
        let n = part.len().min(literal.len());
        if part[part.len() - n..] != literal[literal.len() - n..] {
            return false;
        }
        literal = &literal[..literal.len() - n];
    }
    literal.is_empty()
}

/// The strings a request is matched as, built once per request.
pub(crate) struct Request {
    /// `"{METHOD} {PATH}"`.
    as_sent: String,
    /// `"{METHOD} /{PATH}"` when the path has no version segment, else `None`.
    unversioned: Option<String>,
}

impl Request {
    pub(crate) fn new(method: &str, path: &str) -> Self {
        let unversioned = (path.starts_with('/') && !has_version_prefix(path))
            .then(|| format!("{method} /{path}"));
        Request {
            as_sent: format!("{method} {path}"),
            unversioned,
        }
    }
}

/// `/v` followed by digits and dots, then `/` or the end: `/v1.41/...`, `/v1.41`.
fn has_version_prefix(path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/v") else {
        return false;
    };
    let end = rest.find('/').unwrap_or(rest.len());
    let version = &rest[..end];
    version.starts_with(|c: char| c.is_ascii_digit())
        && version.chars().all(|c| c.is_ascii_digit() || c == '.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, method: &str, path: &str) -> bool {
        Pattern::new(pattern).unwrap().matches(method, path)
    }

    #[test]
    fn every_glob_variant_matches_a_versioned_create() {
        for pattern in [
            "POST /*/containers/create",
            "POST /v1*/containers/create",
            "* /*/containers/create",
            "POST /*/*/create",
            "POST /v[12]*/containers/create",
            "* *",
            "POST /v1.1?/containers/create",
            "POST /v1.16/containers/create",
        ] {
            assert!(
                matches(pattern, "POST", "/v1.16/containers/create"),
                "{pattern} should match"
            );
        }
    }

    #[test]
    fn non_matches() {
        assert!(!matches(
            "POST /*/containers/create",
            "GET",
            "/v1.16/containers/create"
        ));
        assert!(!matches(
            "POST /v[!1]*/containers/create",
            "POST",
            "/v1.16/containers/create"
        ));
        assert!(!matches(
            "POST /*/containers/create",
            "POST",
            "/v1.16/containers/create/x"
        ));
        assert!(!matches(
            "POST /*/containers/*/start",
            "POST",
            "/v1.16/containers/create"
        ));
    }

    #[test]
    fn star_crosses_slashes() {
        assert!(matches(
            "POST /*/start",
            "POST",
            "/v1.16/containers/abc/start"
        ));
        assert!(matches(
            "DELETE /*/containers/*",
            "DELETE",
            "/v1.41/containers/abc"
        ));
    }

    #[test]
    fn matching_is_case_sensitive() {
        assert!(!matches(
            "POST /*/containers/create",
            "post",
            "/v1.16/containers/create"
        ));
        assert!(!matches(
            "POST /*/Containers/create",
            "POST",
            "/v1.16/containers/create"
        ));
    }

    #[test]
    fn the_literal_fast_path_agrees_with_the_globs() {
        let patterns = [
            "POST /*/containers/create",
            "GET /*/version",
            "GET /_ping",
            "GET *",
            "POST /v1.41/containers/create",
            "DELETE /*",
            "GET /*/containers/json",
            "GET /é*/x",
            "POST *create",
            "POST /*",
            "P* /x",
            "POST /",
        ];
        let requests = [
            ("POST", "/v1.41/containers/create"),
            ("POST", "/containers/create"),
            ("POST", "//containers/create"),
            ("POST", "/v1.41/containers/create/x"),
            ("GET", "/v1.41/version"),
            ("GET", "/version"),
            ("GET", "/_ping"),
            ("GET", "/_pingx"),
            ("DELETE", "/v1.41/containers/abc"),
            ("GET", "/é/x"),
            ("GET", "/éé/x"),
            ("PUT", "/x"),
            ("POST", "/"),
            ("POST", ""),
            ("", ""),
            ("GET", "/v1.41/containers/json"),
            ("get", "/v1.41/version"),
        ];
        let compiled: Vec<Pattern> = patterns.iter().map(|p| Pattern::new(p).unwrap()).collect();
        let fast = PatternSet::new(&compiled);
        assert!(fast.literals.is_some());
        let mut slow = fast.clone();
        slow.literals = None;
        for (method, path) in requests {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            fast.matching(method, path, &mut a);
            slow.matching(method, path, &mut b);
            assert_eq!(a, b, "{method} {path}");
            for (i, pattern) in compiled.iter().enumerate() {
                assert_eq!(
                    a.contains(&i),
                    pattern.matches(method, path),
                    "{pattern} vs {method} {path}"
                );
            }
        }
        // Anything with other glob syntax keeps the automaton.
        for other in [
            "* *",
            "* /*/containers/create",
            "GET /v1.?/version",
            "GET /[a]",
            r"GET /a\*b",
            "GET /{a,b}",
        ] {
            let set = PatternSet::new(&[Pattern::new(other).unwrap()]);
            assert!(set.literals.is_none(), "{other}");
        }
    }

    #[test]
    fn backslash_escapes() {
        assert!(matches(r"GET /a\*b", "GET", "/a*b"));
        assert!(!matches(r"GET /a\*b", "GET", "/axb"));
    }

    #[test]
    fn unversioned_paths_match_the_same_patterns() {
        assert!(matches(
            "POST /*/containers/create",
            "POST",
            "/containers/create"
        ));
        assert!(matches(
            "POST /*/containers/*/start",
            "POST",
            "/containers/abc/start"
        ));
        assert!(matches(
            "DELETE /*/containers/*",
            "DELETE",
            "/containers/abc"
        ));
        assert!(matches("GET /*/volumes", "GET", "/volumes"));
        // A pattern that insists on a version does not.
        assert!(!matches(
            "POST /v1*/containers/create",
            "POST",
            "/containers/create"
        ));
        assert!(!matches(
            "POST /v[12]*/containers/create",
            "POST",
            "/containers/create"
        ));
    }

    #[test]
    fn versioned_paths_get_no_second_try() {
        // `/v1.41/containers/create` is not also tried as `//v1.41/...`.
        assert!(!matches(
            "POST //v1.41/*",
            "POST",
            "/v1.41/containers/create"
        ));
        assert!(has_version_prefix("/v1.41/containers/create"));
        assert!(has_version_prefix("/v1"));
        assert!(!has_version_prefix("/volumes/create"));
        assert!(!has_version_prefix("/v/x"));
        assert!(!has_version_prefix("/v1x/x"));
        assert!(!has_version_prefix("/containers/json"));
    }

    #[test]
    fn the_query_string_is_not_part_of_the_match() {
        // Callers strip the query; `matches` sees the path alone.
        let p = Pattern::new("GET /*/containers/json").unwrap();
        assert!(p.matches("GET", "/v1.41/containers/json"));
        assert!(!p.matches("GET", "/v1.41/containers/json?all=1"));
    }

    #[test]
    fn refuses_what_is_not_method_path() {
        for text in ["", "POST", "POST ", " /x", "/containers/create"] {
            assert_eq!(
                Pattern::new(text).unwrap_err(),
                PatternError::NotMethodPath(text.to_owned())
            );
        }
        assert_eq!(
            PatternError::NotMethodPath("POST".into()).to_string(),
            r#"endpoint pattern "POST" must be METHOD PATH, e.g. "POST /*/containers/create""#
        );
    }

    #[test]
    fn refuses_a_glob_that_does_not_compile() {
        let err = Pattern::new("POST /v[12/containers").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"endpoint pattern "POST /v[12/containers" is not a valid glob: unclosed character class; missing ']'"#
        );
    }

    #[test]
    fn displays_as_written() {
        let p = Pattern::new("POST /*/containers/create").unwrap();
        assert_eq!(p.to_string(), "POST /*/containers/create");
        assert_eq!(p.as_str(), "POST /*/containers/create");
    }
}
