//! Which Docker responses are streams that must never be buffered.
//!
//! Docker answers some endpoints with a body that is produced over time: it sends the
//! headers at once and the body as things happen (`events`, `logs -f`, `build`, `pull`,
//! `wait` — which the docker CLI calls *before* it starts a container and which answers
//! only when the container exits). Buffering such a body for post-hooks would hold the
//! headers back, and the client with them; for `wait` it would deadlock `docker run`.
//! Those responses stream through and post-hooks are skipped for them.

use http::Method;

/// Strips an API version prefix (`/v1.41`) from a path.
pub(crate) fn strip_version(path: &str) -> &str {
    let Some(rest) = path.strip_prefix("/v") else {
        return path;
    };
    let end = rest.find('/').unwrap_or(rest.len());
    let version = &rest[..end];
    let is_version = !version.is_empty()
        && version.starts_with(|c: char| c.is_ascii_digit())
        && version.chars().all(|c| c.is_ascii_digit() || c == '.');
    if is_version { &rest[end..] } else { path }
}

/// True when Docker answers this endpoint with a stream.
pub(crate) fn is_streaming_endpoint(method: &Method, path: &str) -> bool {
    let path = strip_version(path);
    // The segments, without allocating; an image name may hold any number of `/`, so a
    // long path keeps its first and last segments around an elided middle.
    let mut parts = path.trim_start_matches('/').split('/');
    let mut buffer = [""; 8];
    let mut count = 0;
    for part in parts.by_ref() {
        if count == buffer.len() {
            buffer[buffer.len() - 1] = part;
        } else {
            buffer[count] = part;
            count += 1;
        }
    }
    let segments = &buffer[..count];
    let get = *method == Method::GET;
    let post = *method == Method::POST;
    match segments {
        ["events"] => get,
        ["build" | "session" | "grpc"] => post,
        ["images", "create" | "load"] => post,
        ["images", "get"] => get,
        ["images", .., "get"] => get,
        ["images", .., "push"] => post,
        ["containers", _, "logs" | "stats" | "export" | "archive"] => get,
        ["containers", _, "attach", "ws"] => get,
        ["containers", _, "attach" | "wait"] => post,
        ["exec", _, "start"] => post,
        ["services" | "tasks", _, "logs"] => get,
        ["plugins", "pull"] => post,
        ["plugins", .., "push" | "upgrade"] => post,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_stripped() {
        assert_eq!(strip_version("/v1.41/containers/json"), "/containers/json");
        assert_eq!(strip_version("/v1/x"), "/x");
        assert_eq!(strip_version("/containers/json"), "/containers/json");
        assert_eq!(strip_version("/volumes/x"), "/volumes/x");
        assert_eq!(strip_version("/vx/x"), "/vx/x");
        assert_eq!(strip_version("/_ping"), "/_ping");
        let deep = "/v1.41/images/registry.local:5000/a/b/c/d/e/f/g/push";
        assert!(is_streaming_endpoint(&Method::POST, deep));
    }

    #[test]
    fn docker_streams_are_recognised() {
        let yes = [
            (Method::GET, "/v1.41/events"),
            (Method::POST, "/v1.41/build"),
            (Method::POST, "/v1.41/images/create"),
            (Method::POST, "/v1.41/images/library/busybox/push"),
            (Method::GET, "/v1.41/images/get"),
            (Method::GET, "/v1.41/containers/abc/logs"),
            (Method::POST, "/v1.41/containers/abc/wait"),
            (Method::POST, "/v1.41/containers/abc/attach"),
            (Method::POST, "/v1.41/exec/abc/start"),
            (Method::GET, "/containers/abc/stats"),
        ];
        for (m, p) in yes {
            assert!(is_streaming_endpoint(&m, p), "{m} {p}");
        }
        let no = [
            (Method::GET, "/v1.41/containers/json"),
            (Method::POST, "/v1.41/containers/create"),
            (Method::POST, "/v1.41/containers/abc/start"),
            (Method::GET, "/v1.41/containers/abc/json"),
            (Method::GET, "/_ping"),
            (Method::POST, "/v1.41/events"),
        ];
        for (m, p) in no {
            assert!(!is_streaming_endpoint(&m, p), "{m} {p}");
        }
    }
}
