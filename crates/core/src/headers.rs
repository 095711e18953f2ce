//! Header rules a transparent HTTP/1.1 proxy must follow.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one hop, never forwarded as they are (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

/// True when the message asks to switch protocols (`Connection: Upgrade` + `Upgrade: x`),
/// as Docker clients do for attach and exec (`Upgrade: tcp`) and BuildKit (`h2c`).
pub(crate) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| lists_token(v, "upgrade"))
}

fn lists_token(value: &HeaderValue, token: &str) -> bool {
    value
        .to_str()
        .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// Removes hop-by-hop headers (and those the `Connection` header names). For an upgrade,
/// keeps `Upgrade` and a `Connection: Upgrade` so the next hop switches protocols too.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // The common case, checked in one pass over a few headers: nothing to strip.
    let present = headers.keys().any(|name| {
        HOP_BY_HOP.contains(name)
            || name.as_str() == "keep-alive"
            || name.as_str() == "proxy-connection"
    });
    if !present {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|name| !(upgrade && name == header::UPGRADE))
        .collect();
    for name in named {
        headers.remove(name);
    }
    let upgrade_to = headers.get(header::UPGRADE).cloned();
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    if upgrade && let Some(protocol) = upgrade_to {
        headers.insert(header::UPGRADE, protocol);
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    }
}

/// The media type of a `Content-Type` value, without parameters (compare it ignoring
/// ASCII case).
pub(crate) fn media_type(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(value.split(';').next().unwrap_or_default().trim())
}

/// True for `application/json` (any parameters) and `+json` media types, in any case.
pub(crate) fn is_json(media: &str) -> bool {
    media.eq_ignore_ascii_case("application/json")
        || (starts_with_ignore_case(media, "application/") && ends_with_ignore_case(media, "+json"))
}

/// True for `text/*` media types, in any case.
pub(crate) fn is_text(media: &str) -> bool {
    starts_with_ignore_case(media, "text/")
}

fn starts_with_ignore_case(text: &str, prefix: &str) -> bool {
    text.len() >= prefix.len()
        && text.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

fn ends_with_ignore_case(text: &str, suffix: &str) -> bool {
    text.len() >= suffix.len()
        && text.as_bytes()[text.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
}

/// Sets `Content-Length` for a body the proxy produced (and drops any framing header).
pub(crate) fn set_content_length(headers: &mut HeaderMap, len: usize) {
    headers.remove(header::TRANSFER_ENCODING);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn upgrade_is_recognised_and_kept() {
        let mut h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "tcp"),
            ("content-type", "text/plain"),
        ]);
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "tcp");
        assert_eq!(h["connection"], "Upgrade");
        assert_eq!(h["content-type"], "text/plain");
    }

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut h = map(&[
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("transfer-encoding", "chunked"),
            ("x-registry-auth", "abc"),
        ]);
        assert!(!is_upgrade(&h));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-registry-auth"], "abc");
    }

    #[test]
    fn json_media_types() {
        let h = map(&[("content-type", "Application/JSON; charset=utf-8")]);
        assert!(is_json(media_type(&h).unwrap()));
        assert!(is_text("Text/Plain"));
        assert!(is_json("application/vnd.docker.plugins.v1.2+json"));
        assert!(!is_json("application/x-tar"));
        assert!(!is_json("text/plain"));
    }
}
