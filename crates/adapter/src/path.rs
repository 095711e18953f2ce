//! Docker API request paths and query strings.
//!
//! [`DockerPath`] splits a request target (`ClientRequest::request`) into API version,
//! endpoint and query, and finds the object a request is about (a container, an exec
//! session, a volume, a network). [`query_param`] and [`set_query_param`] read and rewrite
//! one query parameter, leaving the rest of the target byte for byte as sent. With
//! [`RequestExt`] in scope they read as methods of [`ClientRequest`]:
//!
//! ```
//! use powerstrip_adapter::path::RequestExt;
//! use powerstrip_adapter::ClientRequest;
//!
//! let mut request = ClientRequest::new("POST", "/v1.41/containers/web/stop?t=10", None);
//! assert_eq!(request.docker_path().container_id().as_deref(), Some("web"));
//! assert!(request.docker_path().matches("/containers/*/stop"));
//! assert_eq!(request.query_param("t").as_deref(), Some("10"));
//! request.set_query_param("t", "2");
//! assert_eq!(request.request, "/v1.41/containers/web/stop?t=2");
//! ```
//!
//! ## As sent, and as Docker routes it
//! [`DockerPath::version`], [`DockerPath::endpoint`], [`DockerPath::segments`] and
//! [`DockerPath::query`] are slices of the target as the client sent it. Docker's router
//! percent-decodes the path before matching it, so `/containers/w%65b/st%61rt` starts `web`.
//! [`DockerPath::matches`] and the id getters decode the same way, so that a policy built on
//! them sees the request as Docker will. (Behind powerstrip with endpoints configured, the
//! target already arrives in one canonical spelling: escapes decoded but for `%`, `?`, `#`
//! and characters a path cannot hold as they are.)

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

use crate::ClientRequest;

/// A Docker API request target, split:
/// `/v1.41/containers/abc/start?x=1` → version `Some("1.41")`, endpoint
/// `/containers/abc/start`, query `Some("x=1")`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DockerPath<'a> {
    /// The path as sent, version prefix included, query excluded; the decoding getters
    /// work from it.
    path: &'a str,
    /// The version prefix without its `/v` (`1.41`), if the path has one.
    version: Option<&'a str>,
    /// The path after the version prefix.
    endpoint: &'a str,
    /// Everything after the first `?`.
    query: Option<&'a str>,
}

impl<'a> DockerPath<'a> {
    /// Splits a request target: a path with or without a query string, with or without a
    /// `/vX.Y` prefix (the prefix is `/v` and one or more digits and dots, as Docker's
    /// router has it, so `/version` is an endpoint, not a version).
    pub fn parse(request: &'a str) -> Self {
        let (path, query) = match request.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (request, None),
        };
        let (version, endpoint) = split_version(path);
        DockerPath {
            path,
            version,
            endpoint,
            query,
        }
    }

    /// The API version the client asked for, `1.41` for `/v1.41/…`; `None` for unversioned
    /// requests (`/_ping`, some SDKs).
    pub fn version(&self) -> Option<&'a str> {
        self.version
    }

    /// The path without version prefix and query, as sent: `/containers/abc/start`
    /// (`/` for a bare `/v1.41`).
    pub fn endpoint(&self) -> &'a str {
        self.endpoint
    }

    /// The endpoint's `/`-separated segments, as sent: `containers`, `abc`, `start`. None
    /// for `/`.
    pub fn segments(&self) -> impl Iterator<Item = &'a str> + use<'a> {
        segments(self.endpoint)
    }

    /// The query string without its `?`, as sent; `None` when there is no `?`.
    pub fn query(&self) -> Option<&'a str> {
        self.query
    }

    /// The container a `/containers/{id}/…` or `/containers/{id}` request is about (an id,
    /// an id prefix or a name, percent-decoded); `None` for other endpoints and for
    /// `/containers/create`, `/containers/json` and `/containers/prune`.
    pub fn container_id(&self) -> Option<Cow<'a, str>> {
        self.routed(|endpoint| object_id(endpoint, "containers", &["create", "json", "prune"]))
    }

    /// The exec session of `/exec/{id}/start`, `/exec/{id}/resize` and `/exec/{id}/json`
    /// (percent-decoded). `/containers/{id}/exec` creates one and has none.
    pub fn exec_id(&self) -> Option<Cow<'a, str>> {
        self.routed(|endpoint| object_id(endpoint, "exec", &[]))
    }

    /// The network of `/networks/{id}` and `/networks/{id}/connect|disconnect`
    /// (percent-decoded); `None` for `/networks/create` and `/networks/prune`.
    pub fn network_id(&self) -> Option<Cow<'a, str>> {
        self.routed(|endpoint| object_id(endpoint, "networks", &["create", "prune"]))
    }

    /// The volume of `/volumes/{name}` (percent-decoded). Docker routes everything after
    /// `/volumes/` as the name, so a plugin's `a/b` is one name. `None` for
    /// `/volumes/create` and `/volumes/prune`.
    pub fn volume_name(&self) -> Option<Cow<'a, str>> {
        self.routed(|endpoint| {
            let name = endpoint.strip_prefix("/volumes/")?;
            (!name.is_empty() && name != "create" && name != "prune").then_some(name)
        })
    }

    /// Whether the endpoint matches `endpoint_glob` segment by segment, where a `*` segment
    /// matches any one non-empty segment: `/containers/*/start` matches
    /// `/v1.41/containers/abc/start` but not `/containers/abc/stop` or
    /// `/containers/a/b/start`. The glob has no version prefix and no query; the endpoint
    /// is compared percent-decoded, as Docker routes it. Case-sensitive.
    pub fn matches(&self, endpoint_glob: &str) -> bool {
        let decoded = percent_decode_str(self.path).decode_utf8_lossy();
        let mut have = segments(split_version(&decoded).1);
        let mut want = segments(endpoint_glob);
        loop {
            match (have.next(), want.next()) {
                (None, None) => return true,
                (Some(have), Some(want)) if have == want || (want == "*" && !have.is_empty()) => {}
                _ => return false,
            }
        }
    }

    /// Applies `find` to the percent-decoded endpoint, borrowing from the request when
    /// nothing needed decoding.
    fn routed(&self, find: impl for<'x> Fn(&'x str) -> Option<&'x str>) -> Option<Cow<'a, str>> {
        match percent_decode_str(self.path).decode_utf8_lossy() {
            Cow::Borrowed(path) => find(split_version(path).1).map(Cow::Borrowed),
            Cow::Owned(path) => {
                find(split_version(&path).1).map(|found| Cow::Owned(found.to_owned()))
            }
        }
    }
}

/// The first value of query parameter `key`, decoded (`%XX` and `+`), as Docker reads it;
/// `Some("")` for a bare `key` or `key=`.
pub fn query_param(request: &ClientRequest, key: &str) -> Option<String> {
    form_urlencoded::parse(request.query()?.as_bytes())
        .find(|(name, _)| name == key)
        .map(|(_, value)| value.into_owned())
}

/// Sets query parameter `key` to `value` (encoded here): its first occurrence is replaced
/// in place and later ones removed, else it is appended. The path and every other parameter
/// are kept byte for byte, in order.
pub fn set_query_param(request: &mut ClientRequest, key: &str, value: &str) {
    let pair = form_urlencoded::Serializer::new(String::new())
        .append_pair(key, value)
        .finish();
    let path = request.path();
    let mut parts: Vec<&str> = Vec::new();
    let mut placed = false;
    for part in query_parts(request) {
        if part_key(part) != key {
            parts.push(part);
        } else if !placed {
            parts.push(&pair);
            placed = true;
        }
    }
    if !placed {
        parts.push(&pair);
    }
    request.request = format!("{path}?{}", parts.join("&"));
}

/// Removes every occurrence of query parameter `key` and returns the first value (decoded);
/// the rest of the target is kept byte for byte. Drops the `?` when nothing is left.
pub fn remove_query_param(request: &mut ClientRequest, key: &str) -> Option<String> {
    let first = query_param(request, key)?;
    let path = request.path();
    let kept: Vec<&str> = query_parts(request)
        .filter(|part| part_key(part) != key)
        .collect();
    request.request = if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    Some(first)
}

/// Path and query helpers as methods of [`ClientRequest`]:
/// `request.docker_path().container_id()`, `request.set_query_param("force", "1")`.
pub trait RequestExt {
    /// The request target, split: see [`DockerPath`].
    fn docker_path(&self) -> DockerPath<'_>;
    /// See [`query_param`].
    fn query_param(&self, key: &str) -> Option<String>;
    /// See [`set_query_param`].
    fn set_query_param(&mut self, key: &str, value: &str);
    /// See [`remove_query_param`].
    fn remove_query_param(&mut self, key: &str) -> Option<String>;
}

impl RequestExt for ClientRequest {
    fn docker_path(&self) -> DockerPath<'_> {
        DockerPath::parse(&self.request)
    }

    fn query_param(&self, key: &str) -> Option<String> {
        query_param(self, key)
    }

    fn set_query_param(&mut self, key: &str, value: &str) {
        set_query_param(self, key, value);
    }

    fn remove_query_param(&mut self, key: &str) -> Option<String> {
        remove_query_param(self, key)
    }
}

/// Splits `/v1.41/rest` into `(Some("1.41"), "/rest")`; anything else is all endpoint.
fn split_version(path: &str) -> (Option<&str>, &str) {
    if let Some(rest) = path.strip_prefix("/v") {
        let end = rest.find('/').unwrap_or(rest.len());
        let (version, endpoint) = rest.split_at(end);
        if !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return (
                Some(version),
                if endpoint.is_empty() { "/" } else { endpoint },
            );
        }
    }
    (None, path)
}

fn segments(endpoint: &str) -> impl Iterator<Item = &str> {
    let trimmed = endpoint.strip_prefix('/').unwrap_or(endpoint);
    (!trimmed.is_empty())
        .then(|| trimmed.split('/'))
        .into_iter()
        .flatten()
}

/// The segment after `/{collection}/`, unless empty or one of `reserved`.
fn object_id<'x>(endpoint: &'x str, collection: &str, reserved: &[&str]) -> Option<&'x str> {
    let rest = endpoint
        .strip_prefix('/')?
        .strip_prefix(collection)?
        .strip_prefix('/')?;
    let id = rest.split('/').next()?;
    (!id.is_empty() && !reserved.contains(&id)).then_some(id)
}

/// The `&`-separated parts of the query string, as sent (none for an absent or empty one).
fn query_parts(request: &ClientRequest) -> impl Iterator<Item = &str> {
    request
        .query()
        .filter(|query| !query.is_empty())
        .into_iter()
        .flat_map(|query| query.split('&'))
}

/// The decoded name of one `name=value` part of a query string.
fn part_key(part: &str) -> Cow<'_, str> {
    let name = part.split_once('=').map_or(part, |(name, _)| name);
    form_urlencoded::parse(name.as_bytes())
        .next()
        .map(|(name, _)| name)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(target: &str) -> ClientRequest {
        ClientRequest::new("POST", target, None)
    }

    #[test]
    fn splits_versioned_unversioned_and_query() {
        let path = DockerPath::parse("/v1.41/containers/abc/start?x=1");
        assert_eq!(path.version(), Some("1.41"));
        assert_eq!(path.endpoint(), "/containers/abc/start");
        assert_eq!(path.query(), Some("x=1"));
        assert_eq!(
            path.segments().collect::<Vec<_>>(),
            ["containers", "abc", "start"]
        );

        let path = DockerPath::parse("/containers/create");
        assert_eq!(
            (path.version(), path.endpoint(), path.query()),
            (None, "/containers/create", None)
        );

        let path = DockerPath::parse("/_ping");
        assert_eq!((path.version(), path.endpoint()), (None, "/_ping"));
        let path = DockerPath::parse("/version");
        assert_eq!((path.version(), path.endpoint()), (None, "/version"));
        let path = DockerPath::parse("/v1.41/version");
        assert_eq!(
            (path.version(), path.endpoint()),
            (Some("1.41"), "/version")
        );
        let path = DockerPath::parse("/v1.41");
        assert_eq!((path.version(), path.endpoint()), (Some("1.41"), "/"));
        assert_eq!(path.segments().count(), 0);
        let path = DockerPath::parse("/v1.41?");
        assert_eq!((path.endpoint(), path.query()), ("/", Some("")));
        let path = DockerPath::parse("/containers/json?all=1&filters=%7B%7D");
        assert_eq!(path.query(), Some("all=1&filters=%7B%7D"));
    }

    #[test]
    fn finds_the_object_a_request_is_about() {
        let id = |target: &'static str| DockerPath::parse(target).container_id();
        assert_eq!(id("/v1.41/containers/abc/start").as_deref(), Some("abc"));
        assert_eq!(id("/v1.41/containers/abc").as_deref(), Some("abc"));
        assert_eq!(id("/containers/web/json?size=1").as_deref(), Some("web"));
        for none in [
            "/v1.41/containers/create?name=web",
            "/v1.41/containers/json",
            "/v1.41/containers/prune",
            "/v1.41/containers/",
            "/v1.41/containers",
            "/v1.41/images/abc/json",
            "/v1.41/exec/abc/start",
        ] {
            assert_eq!(id(none), None, "{none}");
        }
        // Docker decodes the path before routing it, and so do these.
        let decoded = id("/v1.41/containers/w%65b/start").unwrap();
        assert_eq!(decoded, "web");
        assert!(matches!(decoded, Cow::Owned(_)));
        assert!(matches!(
            id("/containers/web/start").unwrap(),
            Cow::Borrowed(_)
        ));
        assert_eq!(id("/v1%2E41/containers/web/start").as_deref(), Some("web"));

        let exec = |target: &'static str| DockerPath::parse(target).exec_id();
        assert_eq!(exec("/v1.41/exec/e1/start").as_deref(), Some("e1"));
        assert_eq!(exec("/v1.41/exec/e1/json").as_deref(), Some("e1"));
        assert_eq!(exec("/v1.41/containers/abc/exec"), None);

        let network = |target: &'static str| DockerPath::parse(target).network_id();
        assert_eq!(network("/v1.41/networks/n1").as_deref(), Some("n1"));
        assert_eq!(network("/v1.41/networks/n1/connect").as_deref(), Some("n1"));
        assert_eq!(network("/v1.41/networks/create"), None);
        assert_eq!(network("/v1.41/networks/prune"), None);

        let volume = |target: &'static str| DockerPath::parse(target).volume_name();
        assert_eq!(
            volume("/v1.41/volumes/myVol@gold").as_deref(),
            Some("myVol@gold")
        );
        assert_eq!(
            volume("/v1.41/volumes/myVol%40gold").as_deref(),
            Some("myVol@gold")
        );
        assert_eq!(
            volume("/v1.41/volumes/plugin/vol?force=1").as_deref(),
            Some("plugin/vol")
        );
        assert_eq!(volume("/v1.41/volumes/create"), None);
        assert_eq!(volume("/v1.41/volumes/prune"), None);
        assert_eq!(volume("/v1.41/volumes"), None);
    }

    #[test]
    fn matches_segment_wise() {
        let path = DockerPath::parse("/v1.41/containers/abc/start?x=1");
        assert!(path.matches("/containers/*/start"));
        assert!(path.matches("/containers/abc/start"));
        assert!(path.matches("/*/*/*"));
        assert!(!path.matches("/containers/*"));
        assert!(!path.matches("/containers/*/start/*"));
        assert!(!path.matches("/containers/*/stop"));
        assert!(!path.matches("/v1.41/containers/*/start"));
        assert!(DockerPath::parse("/containers/abc/start").matches("/containers/*/start"));
        assert!(!DockerPath::parse("/containers/a/b/start").matches("/containers/*/start"));
        assert!(!DockerPath::parse("/containers//start").matches("/containers/*/start"));
        assert!(!DockerPath::parse("/Containers/abc/start").matches("/containers/*/start"));
        // What Docker routes to /start, even spelled with escapes.
        assert!(DockerPath::parse("/v1.41/containers/abc/st%61rt").matches("/containers/*/start"));
        assert!(DockerPath::parse("/v1.41").matches("/"));
    }

    #[test]
    fn reads_query_params_decoded() {
        let request = request("/v1.41/containers/create?name=my%20web&force&x=a+b&name=second&e=");
        assert_eq!(query_param(&request, "name").as_deref(), Some("my web"));
        assert_eq!(query_param(&request, "x").as_deref(), Some("a b"));
        assert_eq!(query_param(&request, "force").as_deref(), Some(""));
        assert_eq!(query_param(&request, "e").as_deref(), Some(""));
        assert_eq!(query_param(&request, "missing"), None);
        assert_eq!(query_param(&self::request("/_ping"), "name"), None);
        let filters =
            self::request("/containers/json?filters=%7B%22label%22%3A%5B%22a%3Db%22%5D%7D");
        assert_eq!(
            query_param(&filters, "filters").as_deref(),
            Some(r#"{"label":["a=b"]}"#)
        );
    }

    #[test]
    fn set_query_param_keeps_the_rest_byte_for_byte() {
        // Replaces in place; other params keep their own (odd but valid) encodings.
        let mut req = request("/v1.41/containers/json?all=1&filters=%7b%7d&limit=5&x=a%20b");
        set_query_param(&mut req, "limit", "10");
        assert_eq!(
            req.request,
            "/v1.41/containers/json?all=1&filters=%7b%7d&limit=10&x=a%20b"
        );

        // Appends when absent, encoding the value.
        set_query_param(&mut req, "name", "my web&co=1/ü");
        assert_eq!(
            req.request,
            "/v1.41/containers/json?all=1&filters=%7b%7d&limit=10&x=a%20b&name=my+web%26co%3D1%2F%C3%BC"
        );
        assert_eq!(query_param(&req, "name").as_deref(), Some("my web&co=1/ü"));

        // The first occurrence wins its place; later ones go. Matches decoded names.
        let mut req = request("/containers/create?n%61me=a&other=1&name=b&&trailing=");
        set_query_param(&mut req, "name", "c");
        assert_eq!(req.request, "/containers/create?name=c&other=1&&trailing=");

        // No query yet, or an empty one.
        let mut req = request("/v1.41/containers/abc/stop");
        set_query_param(&mut req, "t", "0");
        assert_eq!(req.request, "/v1.41/containers/abc/stop?t=0");
        let mut req = request("/v1.41/containers/abc/stop?");
        set_query_param(&mut req, "t", "0");
        assert_eq!(req.request, "/v1.41/containers/abc/stop?t=0");
    }

    #[test]
    fn remove_query_param_keeps_the_rest() {
        let mut req = request("/v1.41/containers/abc?force=1&v=1&force=0");
        assert_eq!(remove_query_param(&mut req, "force").as_deref(), Some("1"));
        assert_eq!(req.request, "/v1.41/containers/abc?v=1");
        assert_eq!(remove_query_param(&mut req, "force"), None);
        assert_eq!(remove_query_param(&mut req, "v").as_deref(), Some("1"));
        assert_eq!(req.request, "/v1.41/containers/abc");
    }

    #[test]
    fn request_ext_reads_as_methods() {
        let mut req = request("/v1.41/containers/abc/start?detachKeys=ctrl-p");
        assert_eq!(req.docker_path().container_id().as_deref(), Some("abc"));
        assert_eq!(req.docker_path().version(), Some("1.41"));
        assert_eq!(req.query_param("detachKeys").as_deref(), Some("ctrl-p"));
        req.set_query_param("detachKeys", "ctrl-q,ctrl-q");
        assert_eq!(
            req.request,
            "/v1.41/containers/abc/start?detachKeys=ctrl-q%2Cctrl-q"
        );
        assert_eq!(
            req.remove_query_param("detachKeys").as_deref(),
            Some("ctrl-q,ctrl-q")
        );
        assert_eq!(req.request, "/v1.41/containers/abc/start");
    }
}
