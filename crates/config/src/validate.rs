//! Stage two: the raw tree checked, every problem collected, into the model.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{ConfigError, ConfigErrors};
use crate::model::{
    AdapterDef, AdapterKind, Config, Endpoint, EventFilter, FailurePolicy, StoreBackend,
    StoreSection,
};
use crate::pattern::Pattern;
use crate::raw::{Entry, Node, Value};
use crate::url::AdapterUrl;
use crate::{DEFAULT_ADAPTER_TIMEOUT, Format};

/// Checks a parsed document and builds the model, or returns every problem in line order.
pub(crate) fn build(doc: &Node, origin: &str, format: Format) -> Result<Config, ConfigErrors> {
    let mut check = Checker {
        origin,
        errors: Vec::new(),
    };
    let config = check.config(doc, format);
    if check.errors.is_empty() {
        Ok(config)
    } else {
        check.errors.sort_by_key(|e| e.line);
        Err(ConfigErrors(check.errors))
    }
}

/// An endpoint before its pattern and chains are checked.
struct RawEndpoint<'n> {
    pattern: &'n str,
    line: usize,
    pre: Option<&'n Node>,
    post: Option<&'n Node>,
}

struct Checker<'o> {
    origin: &'o str,
    errors: Vec<ConfigError>,
}

impl Checker<'_> {
    fn error(&mut self, line: usize, message: String) {
        self.errors
            .push(ConfigError::new(self.origin, Some(line), message));
    }

    fn config(&mut self, doc: &Node, format: Format) -> Config {
        let mut config = Config {
            origin: self.origin.to_owned(),
            endpoints: Vec::new(),
            adapters: Vec::new(),
            store: StoreSection::default(),
        };
        let Value::Map(top) = &doc.value else {
            self.error(
                doc.line,
                "the top level must be a table (version, endpoints, adapters)".into(),
            );
            return config;
        };
        let mut names = HashSet::new();
        if let Some(adapters) = doc.get("adapters") {
            config.adapters = self.adapters(adapters, &mut names);
        }
        for entry in top {
            match entry.key.as_str() {
                "version" => self.version(&entry.node),
                "adapters" => {}
                "store" => config.store = self.store(entry),
                "endpoints" => {
                    let raw = match format {
                        Format::Toml => self.toml_endpoints(entry),
                        Format::Yaml => self.yaml_endpoints(entry),
                    };
                    config.endpoints = raw
                        .into_iter()
                        .filter_map(|e| self.endpoint(e, &names))
                        .collect();
                }
                other => self.error(
                    entry.line,
                    format!(
                        "unknown key {other:?} at top level (expected version, endpoints, adapters, store)"
                    ),
                ),
            }
        }
        config
    }

    /// `[store]`: the backend and its settings.
    fn store(&mut self, entry: &Entry) -> StoreSection {
        let mut section = StoreSection {
            line: entry.line,
            ..StoreSection::default()
        };
        let Value::Map(entries) = &entry.node.value else {
            self.error(
                entry.line,
                format!(
                    "store must be a table (backend = \"embedded\" or \"etcd\", ...), not {}",
                    entry.node.describe()
                ),
            );
            return section;
        };
        let backend = match entry.node.get("backend") {
            None => "embedded",
            Some(b) => match b.node.as_str() {
                Some(name @ ("embedded" | "etcd")) => name,
                _ => {
                    self.error(
                        b.line,
                        format!(
                            "store: backend must be \"embedded\" or \"etcd\", not {}",
                            b.node.describe()
                        ),
                    );
                    return section;
                }
            },
        };
        let string = |this: &mut Self, e: &Entry| -> Option<String> {
            match e.node.as_str() {
                Some(text) if !text.is_empty() => Some(text.to_owned()),
                _ => {
                    this.error(
                        e.line,
                        format!(
                            "store: {} must be a non-empty string, not {}",
                            e.key,
                            e.node.describe()
                        ),
                    );
                    None
                }
            }
        };
        let allowed: &[&str] = match backend {
            "embedded" => &["backend", "path", "timeout"],
            _ => &[
                "backend",
                "endpoints",
                "prefix",
                "ca",
                "cert",
                "key",
                "user",
                "password",
                "timeout",
            ],
        };
        let (mut path, mut endpoints, mut prefix) = (None, Vec::new(), None);
        let (mut ca, mut cert, mut key, mut user, mut password) = (None, None, None, None, None);
        for e in entries {
            if !allowed.contains(&e.key.as_str()) {
                self.error(
                    e.line,
                    format!(
                        "store: unknown key {:?} for the {backend} backend (expected {})",
                        e.key,
                        allowed.join(", ")
                    ),
                );
                continue;
            }
            match e.key.as_str() {
                "path" => path = string(self, e).map(PathBuf::from),
                "prefix" => prefix = string(self, e),
                "ca" => ca = string(self, e).map(PathBuf::from),
                "cert" => cert = string(self, e).map(PathBuf::from),
                "key" => key = string(self, e).map(PathBuf::from),
                "user" => user = string(self, e),
                "password" => password = string(self, e),
                "timeout" => section.timeout = self.duration("store", e),
                "endpoints" => endpoints = self.endpoint_urls(e),
                _ => {}
            }
        }
        section.backend = match backend {
            "embedded" => StoreBackend::Embedded { path },
            _ => {
                if endpoints.is_empty() && !entries.iter().any(|e| e.key == "endpoints") {
                    self.error(
                        entry.line,
                        "store: the etcd backend needs endpoints = [\"http://HOST:2379\", ...]"
                            .into(),
                    );
                }
                let identity = match (cert, key) {
                    (Some(cert), Some(key)) => Some((cert, key)),
                    (None, None) => None,
                    _ => {
                        self.error(entry.line, "store: cert and key go together".into());
                        None
                    }
                };
                let user = match (user, password) {
                    (Some(user), Some(password)) => Some((user, password)),
                    (None, None) => None,
                    _ => {
                        self.error(entry.line, "store: user and password go together".into());
                        None
                    }
                };
                let prefix = prefix.unwrap_or_else(|| crate::model::DEFAULT_ETCD_PREFIX.to_owned());
                if !prefix.starts_with('/') {
                    self.error(
                        entry.line,
                        format!("store: prefix {prefix:?} must start with \"/\""),
                    );
                }
                StoreBackend::Etcd {
                    endpoints,
                    prefix,
                    ca,
                    identity,
                    user,
                }
            }
        };
        section
    }

    /// `endpoints = ["http://HOST:PORT", ...]` for etcd.
    fn endpoint_urls(&mut self, entry: &Entry) -> Vec<String> {
        let Value::List(items) = &entry.node.value else {
            self.error(
                entry.line,
                format!(
                    "store: endpoints must be a list of URLs such as [\"http://10.0.0.1:2379\"], not {}",
                    entry.node.describe()
                ),
            );
            return Vec::new();
        };
        if items.is_empty() {
            self.error(entry.line, "store: endpoints is empty".into());
        }
        items
            .iter()
            .filter_map(|item| {
                let text = item.as_str().unwrap_or_default();
                let rest = text
                    .strip_prefix("http://")
                    .or_else(|| text.strip_prefix("https://"));
                match rest {
                    Some(host) if !host.is_empty() && !host.contains('/') => Some(text.to_owned()),
                    _ => {
                        self.error(
                            item.line,
                            format!(
                                "store: endpoint {} must be http://HOST:PORT or https://HOST:PORT",
                                item.describe()
                            ),
                        );
                        None
                    }
                }
            })
            .collect()
    }

    fn version(&mut self, node: &Node) {
        if node.to_json() != serde_json::json!(1) {
            self.error(
                node.line,
                format!("unsupported version {} (expected 1)", node.describe()),
            );
        }
    }

    /// `[adapters]`: name → URL string or table. Every name goes into `names`, valid or not,
    /// so a broken definition is reported once rather than again at each use.
    fn adapters(&mut self, entry: &Entry, names: &mut HashSet<String>) -> Vec<AdapterDef> {
        let Value::Map(entries) = &entry.node.value else {
            self.error(
                entry.line,
                "adapters must be a table of name = URL or name = { url = ... }".into(),
            );
            return Vec::new();
        };
        entries
            .iter()
            .filter_map(|e| {
                names.insert(e.key.clone());
                self.adapter(e)
            })
            .collect()
    }

    fn adapter(&mut self, entry: &Entry) -> Option<AdapterDef> {
        let name = &entry.key;
        let def = |kind| AdapterDef {
            name: name.clone(),
            kind,
            timeout: DEFAULT_ADAPTER_TIMEOUT,
            failure: FailurePolicy::Fail,
            unwind: false,
            events: Vec::new(),
            ca: None,
            line: entry.line,
        };
        if let Some(url) = entry.node.as_str() {
            return self.url(name, &entry.node, url).map(def);
        }
        let Value::Map(fields) = &entry.node.value else {
            self.error(
                entry.line,
                format!(
                    "adapter {name:?} must be a URL string or a table with url or builtin, not {}",
                    entry.node.describe()
                ),
            );
            return None;
        };
        let kind = match (entry.node.get("url"), entry.node.get("builtin")) {
            (Some(url), None) => {
                for field in fields {
                    if !matches!(
                        field.key.as_str(),
                        "url" | "timeout" | "failure" | "unwind" | "events" | "ca"
                    ) {
                        self.error(
                            field.line,
                            format!("unknown key {:?} in adapter {name:?} (expected url, timeout, failure, unwind, events, ca)", field.key),
                        );
                    }
                }
                match url.node.as_str() {
                    Some(text) => self.url(name, &url.node, text),
                    None => {
                        self.error(
                            url.line,
                            format!(
                                "adapter {name:?}: url must be a string, not {}",
                                url.node.describe()
                            ),
                        );
                        None
                    }
                }
            }
            (None, Some(builtin)) => {
                let options = fields
                    .iter()
                    .filter(|f| {
                        !matches!(f.key.as_str(), "builtin" | "timeout" | "failure" | "events")
                    })
                    .map(|f| (f.key.clone(), f.node.to_json()))
                    .collect();
                match builtin.node.as_str() {
                    Some(builtin) => Some(AdapterKind::Builtin {
                        builtin: builtin.to_owned(),
                        options,
                    }),
                    None => {
                        self.error(
                            builtin.line,
                            format!(
                                "adapter {name:?}: builtin must be a string, not {}",
                                builtin.node.describe()
                            ),
                        );
                        None
                    }
                }
            }
            (Some(_), Some(_)) => {
                self.error(
                    entry.line,
                    format!("adapter {name:?} has both url and builtin (expected exactly one)"),
                );
                None
            }
            (None, None) => {
                self.error(
                    entry.line,
                    format!("adapter {name:?} has neither url nor builtin"),
                );
                None
            }
        };
        let timeout = entry.node.get("timeout").map(|t| self.timeout(name, t));
        let failure = entry.node.get("failure").map(|f| self.failure(name, f));
        let is_http = matches!(kind, Some(AdapterKind::Http { .. }));
        let unwind = match entry.node.get("unwind").filter(|_| is_http) {
            Some(u) => self.flag(name, "unwind", u),
            None => Some(false),
        };
        let events = entry.node.get("events").map(|e| self.events(name, e));
        let ca = match entry.node.get("ca").filter(|_| is_http) {
            Some(c) => self.ca(name, c, kind.as_ref()).map(Some),
            None => Some(None),
        };
        Some(AdapterDef {
            timeout: timeout.unwrap_or(Some(DEFAULT_ADAPTER_TIMEOUT))?,
            failure: failure.unwrap_or(Some(FailurePolicy::Fail))?,
            unwind: unwind?,
            events: events.unwrap_or(Some(Vec::new()))?,
            ca: ca?,
            ..def(kind?)
        })
    }

    fn flag(&mut self, name: &str, key: &str, entry: &Entry) -> Option<bool> {
        match &entry.node.value {
            Value::Scalar(serde_json::Value::Bool(b)) => Some(*b),
            _ => {
                self.error(
                    entry.line,
                    format!(
                        "adapter {name:?}: {key} must be true or false, not {}",
                        entry.node.describe()
                    ),
                );
                None
            }
        }
    }

    fn events(&mut self, name: &str, entry: &Entry) -> Option<Vec<EventFilter>> {
        let Value::List(items) = &entry.node.value else {
            self.error(
                entry.line,
                format!("adapter {name:?}: events must be a list such as [\"die\", \"destroy\"], not {}", entry.node.describe()),
            );
            return None;
        };
        let mut filters = Vec::new();
        let mut ok = true;
        for item in items {
            match item.as_str().map(EventFilter::parse) {
                Some(Ok(filter)) => filters.push(filter),
                Some(Err(reason)) => {
                    ok = false;
                    self.error(item.line, format!("adapter {name:?}: events: {reason}"));
                }
                None => {
                    ok = false;
                    self.error(
                        item.line,
                        format!(
                            "adapter {name:?}: events must be strings, not {}",
                            item.describe()
                        ),
                    );
                }
            }
        }
        ok.then_some(filters)
    }

    fn ca(&mut self, name: &str, entry: &Entry, kind: Option<&AdapterKind>) -> Option<PathBuf> {
        let Some(path) = entry.node.as_str() else {
            self.error(
                entry.line,
                format!(
                    "adapter {name:?}: ca must be a path to a PEM file, not {}",
                    entry.node.describe()
                ),
            );
            return None;
        };
        if !matches!(
            kind,
            Some(AdapterKind::Http {
                url: AdapterUrl::Tcp { https: true, .. }
            })
        ) {
            self.error(
                entry.line,
                format!("adapter {name:?}: ca applies only to https:// URLs"),
            );
            return None;
        }
        Some(PathBuf::from(path))
    }

    fn url(&mut self, name: &str, node: &Node, text: &str) -> Option<AdapterKind> {
        match AdapterUrl::parse(text) {
            Ok(url) => Some(AdapterKind::Http { url }),
            Err(reason) => {
                self.error(
                    node.line,
                    format!("adapter {name:?}: bad URL {text:?}: {reason}"),
                );
                None
            }
        }
    }

    /// A positive duration string (`"500ms"`, `"2s"`) for `what`'s `entry`.
    fn duration(&mut self, what: &str, entry: &Entry) -> Option<Duration> {
        let Some(text) = entry.node.as_str() else {
            self.error(
                entry.line,
                format!(
                    "{what}: {} must be a duration string such as \"500ms\" or \"2s\", not {}",
                    entry.key,
                    entry.node.describe()
                ),
            );
            return None;
        };
        match humantime::parse_duration(text) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                self.error(
                    entry.line,
                    format!("{what}: {} must be greater than zero", entry.key),
                );
                None
            }
            Err(e) => {
                self.error(
                    entry.line,
                    format!("{what}: bad {} {text:?}: {e}", entry.key),
                );
                None
            }
        }
    }

    fn timeout(&mut self, name: &str, entry: &Entry) -> Option<Duration> {
        let Some(text) = entry.node.as_str() else {
            self.error(
                entry.line,
                format!(
                    "adapter {name:?}: timeout must be a duration string such as \"500ms\" or \"2s\", not {}",
                    entry.node.describe()
                ),
            );
            return None;
        };
        match humantime::parse_duration(text) {
            Ok(d) if d.is_zero() => {
                self.error(
                    entry.line,
                    format!("adapter {name:?}: timeout must be greater than zero"),
                );
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.error(
                    entry.line,
                    format!("adapter {name:?}: bad timeout {text:?}: {e}"),
                );
                None
            }
        }
    }

    fn failure(&mut self, name: &str, entry: &Entry) -> Option<FailurePolicy> {
        match entry.node.as_str() {
            Some("fail") => Some(FailurePolicy::Fail),
            Some("ignore") => Some(FailurePolicy::Ignore),
            _ => {
                self.error(
                    entry.line,
                    format!(
                        "adapter {name:?}: failure must be \"fail\" or \"ignore\", not {}",
                        entry.node.describe()
                    ),
                );
                None
            }
        }
    }

    /// `[[endpoints]]`: tables with `match`, `pre`, `post`.
    fn toml_endpoints<'n>(&mut self, entry: &'n Entry) -> Vec<RawEndpoint<'n>> {
        let Value::List(items) = &entry.node.value else {
            self.error(
                entry.line,
                "endpoints must be an array of tables ([[endpoints]])".into(),
            );
            return Vec::new();
        };
        let mut endpoints = Vec::new();
        for item in items {
            let Value::Map(fields) = &item.value else {
                self.error(
                    item.line,
                    format!(
                        "endpoints must be an array of tables ([[endpoints]]), not {}",
                        item.describe()
                    ),
                );
                continue;
            };
            let Some(matcher) = item.get("match") else {
                self.error(
                    item.line,
                    "endpoint has no match key (expected match = \"METHOD PATH\")".into(),
                );
                continue;
            };
            let Some(pattern) = matcher.node.as_str() else {
                self.error(
                    matcher.line,
                    format!(
                        "endpoint match must be a string \"METHOD PATH\", not {}",
                        matcher.node.describe()
                    ),
                );
                continue;
            };
            for field in fields {
                if !matches!(field.key.as_str(), "match" | "pre" | "post") {
                    self.error(
                        field.line,
                        format!(
                            "unknown key {:?} in endpoint {pattern:?} (expected match, pre, post)",
                            field.key
                        ),
                    );
                }
            }
            endpoints.push(RawEndpoint {
                pattern,
                line: matcher.line,
                pre: item.get("pre").map(|e| &e.node),
                post: item.get("post").map(|e| &e.node),
            });
        }
        endpoints
    }

    /// `endpoints:` a mapping of `"METHOD PATH"` to `{pre: [...], post: [...]}`.
    fn yaml_endpoints<'n>(&mut self, entry: &'n Entry) -> Vec<RawEndpoint<'n>> {
        let Value::Map(entries) = &entry.node.value else {
            self.error(
                entry.line,
                "endpoints must be a mapping of \"METHOD PATH\" to pre/post lists".into(),
            );
            return Vec::new();
        };
        let mut endpoints = Vec::new();
        for endpoint in entries {
            let pattern = endpoint.key.as_str();
            match &endpoint.node.value {
                Value::Map(fields) => {
                    for field in fields {
                        if !matches!(field.key.as_str(), "pre" | "post") {
                            self.error(
                                field.line,
                                format!(
                                    "unknown key {:?} in endpoint {pattern:?} (expected pre, post)",
                                    field.key
                                ),
                            );
                        }
                    }
                }
                _ if endpoint.node.is_null() => {}
                _ => {
                    self.error(
                        endpoint.line,
                        format!(
                            "endpoint {pattern:?} must be a mapping with pre and/or post, not {}",
                            endpoint.node.describe()
                        ),
                    );
                    continue;
                }
            }
            endpoints.push(RawEndpoint {
                pattern,
                line: endpoint.line,
                pre: endpoint.node.get("pre").map(|e| &e.node),
                post: endpoint.node.get("post").map(|e| &e.node),
            });
        }
        endpoints
    }

    fn endpoint(&mut self, raw: RawEndpoint<'_>, names: &HashSet<String>) -> Option<Endpoint> {
        let pattern = Pattern::new(raw.pattern)
            .map_err(|e| self.error(raw.line, e.to_string()))
            .ok();
        if raw.pre.is_none() && raw.post.is_none() {
            self.error(
                raw.line,
                format!("endpoint {:?} has neither pre nor post", raw.pattern),
            );
        }
        let pre = self.chain(raw.pattern, "pre", raw.pre, names);
        let post = self.chain(raw.pattern, "post", raw.post, names);
        Some(Endpoint {
            pattern: pattern?,
            pre: pre?,
            post: post?,
            line: raw.line,
        })
    }

    fn chain(
        &mut self,
        endpoint: &str,
        which: &str,
        node: Option<&Node>,
        names: &HashSet<String>,
    ) -> Option<Vec<String>> {
        let Some(node) = node else {
            return Some(Vec::new());
        };
        let Value::List(items) = &node.value else {
            self.error(
                node.line,
                format!(
                    "endpoint {endpoint:?}: {which} must be a list of adapter names, not {}",
                    node.describe()
                ),
            );
            return None;
        };
        let mut chain = Some(Vec::new());
        for item in items {
            match item.as_str() {
                Some(name) if names.contains(name) => {
                    if let Some(chain) = &mut chain {
                        chain.push(name.to_owned());
                    }
                }
                Some(name) => {
                    self.error(
                        item.line,
                        format!("endpoint {endpoint:?} uses adapter {name:?} in its {which} chain, but no adapter {name:?} is defined"),
                    );
                    chain = None;
                }
                None => {
                    self.error(
                        item.line,
                        format!("endpoint {endpoint:?}: {which} must be a list of adapter names, not contain {}", item.describe()),
                    );
                    chain = None;
                }
            }
        }
        chain
    }
}
