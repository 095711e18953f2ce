//! # Powerstrip configuration
//!
//! Loads an operator's configuration — our native TOML (`adapters.toml`) or the original
//! Powerstrip YAML (`adapters.yml`), read as-is — into one validated [`Config`], and
//! decides which endpoints a request hooks. It knows no HTTP client, no socket and no
//! adapter by name: the proxy and the binary do.
//!
//! ## Layout
//! - `raw`: stage one. Either format parsed into one tree whose every key and value
//!   knows its line; only syntax errors here.
//! - `validate`: stage two. The tree checked into the model, collecting *every* problem
//!   as [`ConfigError`] (`file:line: what is wrong`) rather than stopping at the first.
//! - [`Config`], [`Endpoint`], [`AdapterDef`], [`AdapterKind`], [`FailurePolicy`]: the model.
//! - [`Pattern`]: a `METHOD PATH` glob and the matching rules, including the
//!   unversioned-path rule (`/containers/create` hooks like `/v1.41/containers/create`).
//! - [`AdapterUrl`]: `http(s)://host[:port]/path` or `unix:///path.sock`.
//!
//! ```
//! use powerstrip_config::{parse, Format};
//!
//! let yaml = r#"
//! version: 1
//! endpoints:
//!   "POST /*/containers/create":
//!     pre: [weave]
//! adapters:
//!   weave: http://weave/extension
//! "#;
//! let config = parse(yaml, "adapters.yml", Format::Yaml).unwrap();
//! let endpoint = config.matching("POST", "/v1.41/containers/create").next().unwrap();
//! assert_eq!(endpoint.pre, ["weave"]);
//! ```
#![forbid(unsafe_code)]

mod error;
mod model;
mod pattern;
mod raw;
mod url;
mod validate;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::time::Duration;

pub use error::{ConfigError, ConfigErrors};
pub use model::{
    AdapterDef, AdapterKind, Config, DEFAULT_ETCD_PREFIX, Endpoint, EventFilter, FailurePolicy,
    StoreBackend, StoreSection,
};
pub use pattern::{Pattern, PatternError, PatternSet};
pub use url::AdapterUrl;

/// How long an adapter call may take when its definition does not say.
pub const DEFAULT_ADAPTER_TIMEOUT: Duration = Duration::from_secs(10);

/// The two file formats, which load into the same model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Our native `adapters.toml`.
    Toml,
    /// The original Powerstrip `adapters.yml`.
    Yaml,
}

/// Which format a file is in.
///
/// The extension wins (`.toml` → Toml; `.yml`/`.yaml` → Yaml); otherwise the content is
/// sniffed: a TOML-looking first significant line (`[table]`, `[[array]]`, `key = value`)
/// means Toml, anything else Yaml.
///
/// ```
/// use std::path::Path;
/// use powerstrip_config::{detect_format, Format};
///
/// assert_eq!(detect_format(Some(Path::new("adapters.yml")), ""), Format::Yaml);
/// assert_eq!(detect_format(None, "# hooks\nversion = 1\n"), Format::Toml);
/// assert_eq!(detect_format(None, "version: 1\n"), Format::Yaml);
/// ```
pub fn detect_format(path: Option<&Path>, text: &str) -> Format {
    let extension = path.and_then(Path::extension).and_then(|e| e.to_str());
    match extension {
        Some(e) if e.eq_ignore_ascii_case("toml") => return Format::Toml,
        Some(e) if e.eq_ignore_ascii_case("yml") || e.eq_ignore_ascii_case("yaml") => {
            return Format::Yaml;
        }
        _ => {}
    }
    let first = text
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty() && !line.starts_with('#'));
    match first {
        Some(line) if looks_like_toml(line) => Format::Toml,
        _ => Format::Yaml,
    }
}

/// `[table]`, `[[array]]` or `key = value` with a bare, quoted or dotted key.
fn looks_like_toml(line: &str) -> bool {
    line.starts_with('[')
        || line.split_once('=').is_some_and(|(key, _)| {
            let key = key.trim();
            !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.\"' ".contains(c))
        })
}

/// Reads and parses a file, its format detected by [`detect_format`]. Messages name the
/// file by the path as given.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError::new(
            &origin,
            None,
            format!("cannot read: {e}"),
        )])
    })?;
    parse(&text, &origin, detect_format(Some(path), &text))
}

/// Parses and validates text; `origin` names it in messages (a file name, or e.g. `<inline>`).
///
/// ```
/// use powerstrip_config::{parse, AdapterKind, Format};
///
/// let config = parse(r#"
/// [adapters]
/// weave = { url = "http://weave/extension", timeout = "2s" }
///
/// [[endpoints]]
/// match = "POST /*/containers/*/start"
/// post = ["weave"]
/// "#, "adapters.toml", Format::Toml).unwrap();
/// assert_eq!(config.adapter("weave").unwrap().timeout.as_secs(), 2);
///
/// let errors = parse("[[endpoints]]\nmatch = \"POST /x\"\npre = [\"nope\"]\n", "adapters.toml", Format::Toml)
///     .unwrap_err();
/// assert_eq!(
///     errors.to_string(),
///     r#"adapters.toml:3: endpoint "POST /x" uses adapter "nope" in its pre chain, but no adapter "nope" is defined"#,
/// );
/// ```
pub fn parse(text: &str, origin: &str, format: Format) -> Result<Config, ConfigErrors> {
    let doc = match format {
        Format::Toml => raw::from_toml(text, origin),
        Format::Yaml => raw::from_yaml(text, origin),
    }
    .map_err(ConfigErrors)?;
    validate::build(&doc, origin, format)
}
