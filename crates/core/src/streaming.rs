//! Which Docker responses are streams that must never be buffered.
//!
//! Docker answers some endpoints with a body that is produced over time: it sends the
//! headers at once and the body as things happen (`events`, `logs -f`, `build`, `pull`,
//! `wait` — which the docker CLI calls *before* it starts a container and which answers
//! only when the container exits). Buffering such a body for post-hooks would hold the
//! headers back, and the client with them; for `wait` it would deadlock `docker run`.
//! Those responses stream through and post-hooks are skipped for them, unless Docker
//! refuses the call with an error document (a status of 400 or more, JSON), which is no
//! stream. [`streamed_only`] tells which endpoint patterns hook nothing but such endpoints,
//! for `powerstrip check`.

use http::Method;
use powerstrip_config::Pattern;

/// Docker Engine API endpoints (v1.41), as `METHOD` and path with `{id}`/`{name}`
/// placeholders: what a pattern is checked against to tell which endpoints it hooks.
const DOCKER_API: &[(&str, &str)] = &[
    ("GET", "/_ping"),
    ("HEAD", "/_ping"),
    ("GET", "/info"),
    ("GET", "/version"),
    ("GET", "/events"),
    ("GET", "/system/df"),
    ("POST", "/auth"),
    ("GET", "/containers/json"),
    ("POST", "/containers/create"),
    ("POST", "/containers/prune"),
    ("GET", "/containers/{id}/json"),
    ("GET", "/containers/{id}/top"),
    ("GET", "/containers/{id}/logs"),
    ("GET", "/containers/{id}/changes"),
    ("GET", "/containers/{id}/export"),
    ("GET", "/containers/{id}/stats"),
    ("POST", "/containers/{id}/resize"),
    ("POST", "/containers/{id}/start"),
    ("POST", "/containers/{id}/stop"),
    ("POST", "/containers/{id}/restart"),
    ("POST", "/containers/{id}/kill"),
    ("POST", "/containers/{id}/update"),
    ("POST", "/containers/{id}/rename"),
    ("POST", "/containers/{id}/pause"),
    ("POST", "/containers/{id}/unpause"),
    ("POST", "/containers/{id}/attach"),
    ("GET", "/containers/{id}/attach/ws"),
    ("POST", "/containers/{id}/wait"),
    ("DELETE", "/containers/{id}"),
    ("HEAD", "/containers/{id}/archive"),
    ("GET", "/containers/{id}/archive"),
    ("PUT", "/containers/{id}/archive"),
    ("POST", "/containers/{id}/exec"),
    ("POST", "/exec/{id}/start"),
    ("POST", "/exec/{id}/resize"),
    ("GET", "/exec/{id}/json"),
    ("GET", "/images/json"),
    ("POST", "/build"),
    ("POST", "/build/prune"),
    ("POST", "/build/cancel"),
    ("POST", "/images/create"),
    ("GET", "/images/{name}/json"),
    ("GET", "/images/{name}/history"),
    ("POST", "/images/{name}/push"),
    ("POST", "/images/{name}/tag"),
    ("DELETE", "/images/{name}"),
    ("GET", "/images/search"),
    ("POST", "/images/prune"),
    ("POST", "/commit"),
    ("GET", "/images/{name}/get"),
    ("GET", "/images/get"),
    ("POST", "/images/load"),
    ("GET", "/distribution/{name}/json"),
    ("GET", "/networks"),
    ("POST", "/networks/create"),
    ("POST", "/networks/prune"),
    ("GET", "/networks/{id}"),
    ("DELETE", "/networks/{id}"),
    ("POST", "/networks/{id}/connect"),
    ("POST", "/networks/{id}/disconnect"),
    ("GET", "/volumes"),
    ("POST", "/volumes/create"),
    ("POST", "/volumes/prune"),
    ("GET", "/volumes/{name}"),
    ("DELETE", "/volumes/{name}"),
    ("GET", "/swarm"),
    ("POST", "/swarm/init"),
    ("POST", "/swarm/join"),
    ("POST", "/swarm/leave"),
    ("POST", "/swarm/update"),
    ("GET", "/swarm/unlockkey"),
    ("POST", "/swarm/unlock"),
    ("GET", "/nodes"),
    ("GET", "/nodes/{id}"),
    ("DELETE", "/nodes/{id}"),
    ("POST", "/nodes/{id}/update"),
    ("GET", "/services"),
    ("POST", "/services/create"),
    ("GET", "/services/{id}"),
    ("DELETE", "/services/{id}"),
    ("POST", "/services/{id}/update"),
    ("GET", "/services/{id}/logs"),
    ("GET", "/tasks"),
    ("GET", "/tasks/{id}"),
    ("GET", "/tasks/{id}/logs"),
    ("GET", "/secrets"),
    ("POST", "/secrets/create"),
    ("GET", "/secrets/{id}"),
    ("DELETE", "/secrets/{id}"),
    ("POST", "/secrets/{id}/update"),
    ("GET", "/configs"),
    ("POST", "/configs/create"),
    ("GET", "/configs/{id}"),
    ("DELETE", "/configs/{id}"),
    ("POST", "/configs/{id}/update"),
    ("GET", "/plugins"),
    ("GET", "/plugins/privileges"),
    ("POST", "/plugins/pull"),
    ("POST", "/plugins/create"),
    ("GET", "/plugins/{name}/json"),
    ("DELETE", "/plugins/{name}"),
    ("POST", "/plugins/{name}/enable"),
    ("POST", "/plugins/{name}/disable"),
    ("POST", "/plugins/{name}/upgrade"),
    ("POST", "/plugins/{name}/push"),
    ("POST", "/plugins/{name}/set"),
    ("POST", "/session"),
    ("POST", "/grpc"),
];

/// The Docker API endpoints `pattern` hooks, when it hooks at least one and Docker streams
/// the answer of every one of them (`GET /*/events`, `POST /*/build`): post-hooks on such a
/// pattern see only Docker's error answers. `None` otherwise.
///
/// ```
/// use powerstrip_config::Pattern;
/// use powerstrip_core::streaming::streamed_only;
///
/// let events = Pattern::new("GET /*/events").unwrap();
/// assert_eq!(streamed_only(&events), Some(vec!["GET /events".to_owned()]));
/// assert_eq!(streamed_only(&Pattern::new("* *").unwrap()), None);
/// ```
pub fn streamed_only(pattern: &Pattern) -> Option<Vec<String>> {
    let mut hooked = Vec::new();
    for (method, template) in DOCKER_API {
        let path = template
            .replace("{id}", "4f2a9c1d")
            .replace("{name}", "busybox");
        let versioned = format!("/v1.41{path}");
        if !(pattern.matches(method, &versioned) || pattern.matches(method, &path)) {
            continue;
        }
        let Ok(method_value) = Method::from_bytes(method.as_bytes()) else {
            continue;
        };
        if !is_streaming_endpoint(&method_value, &path) {
            return None;
        }
        hooked.push(format!("{method} {template}"));
    }
    (!hooked.is_empty()).then_some(hooked)
}

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
    fn patterns_that_hook_only_streams_are_found() {
        let only = |p: &str| streamed_only(&Pattern::new(p).unwrap());
        assert_eq!(only("GET /*/events"), Some(vec!["GET /events".to_owned()]));
        assert_eq!(
            only("POST /*/containers/*/attach"),
            Some(vec!["POST /containers/{id}/attach".to_owned()])
        );
        assert_eq!(
            only("* /*/containers/*/logs"),
            Some(vec!["GET /containers/{id}/logs".to_owned()])
        );
        assert_eq!(
            only("POST /*/plugins/*"),
            None,
            "plugins/create and enable answer documents"
        );
        assert_eq!(only("POST /*/containers/create"), None);
        assert_eq!(only("* *"), None);
        assert_eq!(only("GET /nothing/docker/serves"), None);
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
