//! `placement`'s options: what the operator writes in its table in `adapters.toml` (or with
//! `--set` for the served binary).

use std::path::PathBuf;
use std::time::Duration;

use powerstrip_adapter::builtin::{Options as Raw, duration, parse_options};
use serde::Deserialize;

use crate::facts::FactsOptions;

/// `facter = "path"` or `facter = false`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FacterOption {
    Path(PathBuf),
    Enabled(bool),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Written {
    #[serde(default)]
    facter: Option<FacterOption>,
    #[serde(default)]
    external_facts: Vec<PathBuf>,
    #[serde(default = "default_refresh", with = "duration")]
    refresh: Duration,
    #[serde(default = "default_swarm_labels")]
    swarm_labels: bool,
}

fn default_refresh() -> Duration {
    crate::facts::DEFAULT_REFRESH
}

fn default_swarm_labels() -> bool {
    true
}

/// The adapter's options, validated.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where facts come from, and how often they are gathered.
    pub facts: FactsOptions,
    /// Whether this node, when it manages a Swarm mode cluster, may publish every node's
    /// facts as `fact.*` node labels (one publisher per cluster is elected).
    pub swarm_labels: bool,
}

impl Options {
    /// Parses and validates `raw`.
    pub fn parse(raw: &Raw) -> Result<Options, String> {
        let written: Written = parse_options(raw)?;
        let facter = match written.facter {
            None | Some(FacterOption::Enabled(true)) => Some(PathBuf::from("facter")),
            Some(FacterOption::Enabled(false)) => None,
            Some(FacterOption::Path(path)) => Some(path),
        };
        for dir in &written.external_facts {
            if !dir.is_absolute() {
                return Err(format!(
                    "external_facts: {:?} must be an absolute path",
                    dir.display()
                ));
            }
        }
        if written.refresh < Duration::from_secs(1) {
            return Err("refresh: must be at least 1s".into());
        }
        let facts = FactsOptions {
            facter,
            external_facts: written.external_facts,
            refresh: written.refresh,
            ..FactsOptions::default()
        };
        facts.validate().map_err(|e| e.to_string())?;
        Ok(Options {
            facts,
            swarm_labels: written.swarm_labels,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn options(value: serde_json::Value) -> Result<Options, String> {
        Options::parse(value.as_object().unwrap())
    }

    #[test]
    fn facter_is_a_path_true_or_false() {
        let default = options(serde_json::json!({})).unwrap();
        assert_eq!(default.facts.facter, Some(PathBuf::from("facter")));
        assert_eq!(default.facts.refresh, Duration::from_secs(30));
        let off = options(serde_json::json!({"facter": false})).unwrap();
        assert_eq!(off.facts.facter, None);
        let path = options(serde_json::json!({"facter": "/opt/bin/facter"})).unwrap();
        assert_eq!(path.facts.facter, Some(PathBuf::from("/opt/bin/facter")));
        assert!(
            options(serde_json::json!({"external_facts": ["facts.d"]}))
                .unwrap_err()
                .contains("absolute")
        );
        assert!(options(serde_json::json!({"refresh": "0s"})).is_err());
        assert!(
            options(serde_json::json!({"colour": 1}))
                .unwrap_err()
                .contains("colour")
        );
    }
}
