//! The request path as Docker routes it.
//!
//! Docker's router (Go's `net/http` and gorilla/mux) percent-decodes a request's path
//! before it matches it against its routes: `/v1.41/containers/%63reate` and
//! `/v1.41/containers%2Fcreate` both create a container. Matching the path as sent would let
//! a client walk around any hook by escaping one character. So, whenever hooks are
//! configured, the proxy decodes each path the way Docker does, matches its patterns against
//! that, and hands the hooks and Docker one canonical spelling of it, which Docker decodes
//! back to exactly what was matched. A path Docker would read another way than it is written
//! — a `.` or `..` segment, an empty segment (its router answers those with a redirect to
//! the cleaned path), a NUL or other control character, bytes that are not UTF-8, a broken
//! escape — is refused with `400` instead.
//!
//! ```
//! use powerstrip_core::target::{PathError, canonical};
//!
//! let escaped = canonical("/v1.41/containers/%63reate").unwrap();
//! assert_eq!(escaped.routed, "/v1.41/containers/create");
//! assert_eq!(escaped.path, "/v1.41/containers/create");
//!
//! // An image digest as docker-py sends it: the same image, one spelling.
//! let digest = canonical("/v1.41/images/busybox%40sha256%3Aabc/json").unwrap();
//! assert_eq!(digest.path, "/v1.41/images/busybox@sha256:abc/json");
//!
//! // What HTTP itself needs stays escaped, so Docker decodes it back to the same path.
//! let odd = canonical("/v1.41/containers/a%3Fb%25/json").unwrap();
//! assert_eq!(odd.routed, "/v1.41/containers/a?b%/json");
//! assert_eq!(odd.path, "/v1.41/containers/a%3Fb%25/json");
//!
//! assert_eq!(canonical("/v1.41/x/%2e%2e/containers/create").unwrap_err(), PathError::DotSegment(".."));
//! ```

use std::borrow::Cow;
use std::fmt::Write as _;

/// A request path in its two forms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Canonical<'a> {
    /// The path as Docker routes it, percent-escapes decoded: what endpoint patterns are
    /// matched against.
    pub routed: Cow<'a, str>,
    /// The same path spelled for the wire, escaping only what a request target needs
    /// (`%`, `?`, `#`, spaces, anything outside RFC 3986's path characters): what hooks see
    /// in `Request` and what Docker receives. Borrowed when the client sent exactly this.
    pub path: Cow<'a, str>,
}

/// Why a request path is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/` (e.g. `OPTIONS *`).
    #[error("it does not start with \"/\"")]
    NotAbsolute,
    /// A `%` not followed by two hexadecimal digits (Docker refuses those too).
    #[error("it holds an invalid percent-escape at byte {at}")]
    BadEscape {
        /// Where the `%` is, counted in bytes from the start of the path.
        at: usize,
    },
    /// Once decoded, the path is not UTF-8.
    #[error("once percent-decoded it is not UTF-8")]
    NotUtf8,
    /// Once decoded, the path holds a control character (NUL, a newline, ...).
    #[error("once percent-decoded it holds the control character {0:?}")]
    Control(char),
    /// A `.` or `..` segment, escaped or not: Docker's router redirects to the path with
    /// it resolved, which is not the path the patterns were matched against.
    #[error(
        "it holds a {0:?} segment (escaped or not), which Docker's router resolves to another path"
    )]
    DotSegment(&'static str),
    /// An empty segment (`//`), escaped or not: Docker's router redirects to the path with
    /// it removed.
    #[error(
        "it holds an empty segment (\"//\", escaped or not), which Docker's router resolves to another path"
    )]
    EmptySegment,
}

/// The path Docker routes for `raw` (a request target's path, query excluded), and its
/// canonical spelling; or why it is refused. Allocates only when `raw` holds an escape or a
/// character that must be escaped.
pub fn canonical(raw: &str) -> Result<Canonical<'_>, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if raw.bytes().all(is_path_char) {
        // Nothing to decode and nothing to escape: the common case.
        check_segments(raw)?;
        return Ok(Canonical {
            routed: Cow::Borrowed(raw),
            path: Cow::Borrowed(raw),
        });
    }
    let routed = decode(raw)?;
    if let Some(c) = routed.chars().find(|c| c.is_control()) {
        return Err(PathError::Control(c));
    }
    check_segments(&routed)?;
    let path = encode(&routed);
    let path = if path == raw {
        Cow::Borrowed(raw)
    } else {
        Cow::Owned(path)
    };
    Ok(Canonical {
        routed: Cow::Owned(routed),
        path,
    })
}

/// RFC 3986's `pchar` without `%`, plus `/`: what a path may hold unescaped.
fn is_path_char(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'/'
        )
}

/// Decodes percent-escapes as Go's `url.PathUnescape` does: `%` must be followed by two
/// hexadecimal digits (either case); `+` stays `+`.
fn decode(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            out.push(b);
            i += 1;
            continue;
        }
        let digits = bytes
            .get(i + 1)
            .and_then(|&h| hex(h))
            .zip(bytes.get(i + 2).and_then(|&l| hex(l)));
        let Some((high, low)) = digits else {
            return Err(PathError::BadEscape { at: i });
        };
        out.push(high << 4 | low);
        i += 3;
    }
    String::from_utf8(out).map_err(|_| PathError::NotUtf8)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Escapes what a path may not hold as it is, with upper-case hexadecimal digits.
fn encode(routed: &str) -> String {
    let mut out = String::with_capacity(routed.len() + 8);
    for b in routed.bytes() {
        if is_path_char(b) {
            out.push(char::from(b));
        } else {
            // Writing into a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Refuses `.`, `..` and empty segments (a trailing `/` is no segment: Docker routes it
/// as it is).
fn check_segments(path: &str) -> Result<(), PathError> {
    let mut segments = path.split('/').skip(1).peekable();
    while let Some(segment) = segments.next() {
        match segment {
            "." => return Err(PathError::DotSegment(".")),
            ".." => return Err(PathError::DotSegment("..")),
            "" if segments.peek().is_some() => return Err(PathError::EmptySegment),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn routed(raw: &str) -> String {
        canonical(raw).unwrap().routed.into_owned()
    }

    #[test]
    fn plain_paths_are_borrowed_as_they_are() {
        for raw in [
            "/_ping",
            "/v1.41/containers/create",
            "/containers/json",
            "/v1.41/images/registry.local:5000/a/b:1.0/json",
            "/v1.41/images/busybox@sha256:abc/json",
            "/v1.41/containers/json/",
            "/",
        ] {
            let c = canonical(raw).unwrap();
            assert!(matches!(c.routed, Cow::Borrowed(_)), "{raw}");
            assert!(matches!(c.path, Cow::Borrowed(_)), "{raw}");
            assert_eq!(c.routed, raw);
        }
    }

    #[test]
    fn escapes_decode_as_docker_routes_them() {
        assert_eq!(
            routed("/v1.41/containers/%63reate"),
            "/v1.41/containers/create"
        );
        assert_eq!(
            routed("/v1.41/containers%2Fcreate"),
            "/v1.41/containers/create"
        );
        assert_eq!(
            routed("/v1.41/containers%2fcreate"),
            "/v1.41/containers/create"
        );
        assert_eq!(routed("/%761.41/info"), "/v1.41/info");
        assert_eq!(routed("/v1.41/images/a+b/json"), "/v1.41/images/a+b/json");
        assert_eq!(routed("/v1.41/images/%C3%A9/json"), "/v1.41/images/é/json");
    }

    #[test]
    fn the_canonical_spelling_escapes_only_what_http_needs() {
        let c = canonical("/v1.41/containers/%63reate").unwrap();
        assert_eq!(c.path, "/v1.41/containers/create");
        let c = canonical("/v1.41/images/a%20b%23c%3Fd%25e/json").unwrap();
        assert_eq!(c.routed, "/v1.41/images/a b#c?d%e/json");
        assert_eq!(c.path, "/v1.41/images/a%20b%23c%3Fd%25e/json");
        let c = canonical("/v1.41/images/%c3%a9/json").unwrap();
        assert_eq!(c.path, "/v1.41/images/%C3%A9/json");
        // A raw character outside RFC 3986 (which hyper lets through) is escaped.
        let c = canonical("/v1.41/images/{x}/json").unwrap();
        assert_eq!(c.routed, "/v1.41/images/{x}/json");
        assert_eq!(c.path, "/v1.41/images/%7Bx%7D/json");
        // Upper-case escapes of such characters are already canonical.
        let c = canonical("/v1.41/images/a%3Fb/json").unwrap();
        assert!(matches!(c.path, Cow::Borrowed(_)));
    }

    #[test]
    fn what_docker_reads_another_way_is_refused() {
        let cases = [
            ("*", PathError::NotAbsolute),
            ("v1.41/info", PathError::NotAbsolute),
            ("/v1.41/%zzinfo", PathError::BadEscape { at: 7 }),
            ("/v1.41/info%", PathError::BadEscape { at: 11 }),
            ("/v1.41/info%4", PathError::BadEscape { at: 11 }),
            ("/v1.41/%ff/json", PathError::NotUtf8),
            ("/v1.41/containers/a%00/json", PathError::Control('\0')),
            ("/v1.41/containers/a%0a/json", PathError::Control('\n')),
            (
                "/v1.41/containers/a%c2%85/json",
                PathError::Control('\u{85}'),
            ),
            ("/v1.41/./containers/create", PathError::DotSegment(".")),
            ("/v1.41/x/../containers/create", PathError::DotSegment("..")),
            (
                "/v1.41/x/%2e%2E/containers/create",
                PathError::DotSegment(".."),
            ),
            (
                "/v1.41/x%2F..%2Fcontainers/create",
                PathError::DotSegment(".."),
            ),
            ("/v1.41/containers/..", PathError::DotSegment("..")),
            ("/v1.41//containers/create", PathError::EmptySegment),
            ("//v1.41/containers/create", PathError::EmptySegment),
            ("/v1.41/containers%2F%2Fcreate", PathError::EmptySegment),
        ];
        for (raw, expected) in cases {
            assert_eq!(canonical(raw), Err(expected), "{raw}");
        }
    }

    #[test]
    fn dots_inside_names_are_fine() {
        assert_eq!(routed("/v1.41/images/a..b/json"), "/v1.41/images/a..b/json");
        assert_eq!(routed("/v1.41/images/.a/json"), "/v1.41/images/.a/json");
        assert_eq!(routed("/v1.41/images/.../json"), "/v1.41/images/.../json");
    }

    /// Every spelling of a path, escaped any way, has one canonical form, which decodes to
    /// the path itself and is its own canonical form.
    #[test]
    fn canonical_forms_round_trip() {
        let paths = [
            "/v1.41/containers/create",
            "/v1.41/images/busybox@sha256:abc/json",
            "/v1.41/images/a b#c?d%e/json",
            "/v1.41/images/é/json",
            "/v1.41/containers/x/archive",
        ];
        for path in paths {
            let bytes = path.as_bytes();
            // Escape each byte in turn, in both cases, and everything at once.
            let mut spellings: Vec<String> = Vec::new();
            for i in 1..bytes.len() {
                for upper in [true, false] {
                    let mut s = String::new();
                    for (j, &b) in bytes.iter().enumerate() {
                        if j == i || !is_path_char(b) {
                            if upper {
                                let _ = write!(s, "%{b:02X}");
                            } else {
                                let _ = write!(s, "%{b:02x}");
                            }
                        } else {
                            s.push(char::from(b));
                        }
                    }
                    spellings.push(s);
                }
            }
            spellings.push(
                std::iter::once("/".to_owned())
                    .chain(bytes[1..].iter().map(|b| format!("%{b:02X}")))
                    .collect(),
            );
            let expected = encode(path);
            for spelling in spellings {
                let c = canonical(&spelling).unwrap_or_else(|e| panic!("{spelling}: {e}"));
                assert_eq!(c.routed, path, "{spelling}");
                assert_eq!(c.path, expected, "{spelling}");
                let again = canonical(&c.path).unwrap();
                assert_eq!(again.routed, path);
                assert_eq!(again.path, c.path);
            }
        }
    }

    /// Docker's side, modelled independently: Go's `url.PathUnescape` (what `net/http`
    /// puts in `URL.Path`, which gorilla/mux routes on) ...
    fn go_unescape(raw: &str) -> Option<Vec<u8>> {
        let b = raw.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' {
                let digits = b.get(i + 1..i + 3)?;
                let text = std::str::from_utf8(digits).ok()?;
                out.push(
                    u8::from_str_radix(text, 16)
                        .ok()
                        .filter(|_| digits.iter().all(u8::is_ascii_hexdigit))?,
                );
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        Some(out)
    }

    /// ... and gorilla/mux's `cleanPath` (Go's `path.Clean`, keeping a trailing slash): a
    /// path it changes is answered with a redirect, not routed.
    fn mux_clean(path: &[u8]) -> Vec<u8> {
        let mut stack: Vec<&[u8]> = Vec::new();
        for segment in path.split(|&b| b == b'/') {
            match segment {
                b"" | b"." => {}
                b".." => {
                    stack.pop();
                }
                other => stack.push(other),
            }
        }
        let mut out = b"/".to_vec();
        out.extend(stack.join(&b'/'));
        if path.ends_with(b"/") && out != b"/" {
            out.push(b'/');
        }
        out
    }

    /// Spellings of Docker API paths: each byte raw or escaped (either case), with now and
    /// then a doubled slash, a dot segment, a NUL or an escaped `?` thrown in.
    fn spelling() -> impl Strategy<Value = String> {
        let paths = prop::sample::select(vec![
            "/v1.41/containers/create",
            "/containers/create",
            "/v1.41/containers/web/start",
            "/v1.41/containers/web/archive",
            "/v1.41/images/busybox@sha256:abc/json",
            "/v1.41/images/registry.local:5000/a/b:1/push",
            "/v1.41/build",
            "/_ping",
        ]);
        let choices = prop::collection::vec(0u8..16, 64);
        (paths, choices, 0usize..64, 0u8..12).prop_map(|(path, choices, at, mutation)| {
            let mut path = path.to_owned();
            let at = at.min(path.len());
            let at = (0..=at)
                .rev()
                .find(|&i| path.is_char_boundary(i))
                .unwrap_or(0);
            match mutation {
                0 => path.insert(at.max(1), '/'),
                1 => path.insert_str(at.max(1), "/./"),
                2 => path.insert_str(at.max(1), "/x/../"),
                3 => path.insert(at.max(1), '\0'),
                4 => path.insert(at.max(1), '?'),
                5 => path.push('/'),
                _ => {}
            }
            let mut out = String::new();
            for (i, b) in path.bytes().enumerate() {
                match choices[i % choices.len()] {
                    0 | 1 => {
                        let _ = write!(out, "%{b:02X}");
                    }
                    2 => {
                        let _ = write!(out, "%{b:02x}");
                    }
                    _ if is_path_char(b) => out.push(char::from(b)),
                    _ => {
                        let _ = write!(out, "%{b:02X}");
                    }
                }
            }
            out
        })
    }

    fn check_against_docker(raw: &str) -> Result<(), TestCaseError> {
        match canonical(raw) {
            Ok(c) => {
                let docker = go_unescape(raw);
                prop_assert_eq!(
                    docker.as_deref(),
                    Some(c.routed.as_bytes()),
                    "Docker routes {:?} as something else than what was matched",
                    raw
                );
                let forwarded = go_unescape(&c.path);
                prop_assert_eq!(
                    forwarded.as_deref(),
                    Some(c.routed.as_bytes()),
                    "Docker routes the forwarded {:?} as something else than what was matched",
                    c.path
                );
                let cleaned = mux_clean(c.routed.as_bytes());
                prop_assert_eq!(
                    cleaned.as_slice(),
                    c.routed.as_bytes(),
                    "Docker would redirect {:?}, not route it",
                    raw
                );
                prop_assert!(c.path.parse::<http::uri::PathAndQuery>().is_ok());
                prop_assert!(!c.path.contains(['?', '#', ' ']));
                let again = canonical(&c.path).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(&again.routed, &c.routed);
                prop_assert_eq!(&again.path, &c.path);
            }
            // Refused only where Docker would not route the path as it reads.
            Err(PathError::NotAbsolute) => prop_assert!(!raw.starts_with('/')),
            Err(PathError::BadEscape { .. }) => prop_assert!(go_unescape(raw).is_none()),
            Err(PathError::NotUtf8) => {
                prop_assert!(go_unescape(raw).is_some_and(|d| std::str::from_utf8(&d).is_err()));
            }
            Err(PathError::Control(c)) => prop_assert!(c.is_control()),
            Err(PathError::DotSegment(_) | PathError::EmptySegment) => {
                let decoded = go_unescape(raw).unwrap_or_default();
                prop_assert_ne!(mux_clean(&decoded), decoded, "{:?} was refused", raw);
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn encodings_of_docker_paths_route_where_they_were_matched(raw in spelling()) {
            check_against_docker(&raw)?;
        }

        #[test]
        fn any_path_routes_where_it_was_matched(raw in "/[a-zA-Z0-9/.%_:@?# +\\-]{0,40}") {
            check_against_docker(&raw)?;
        }
    }
}
