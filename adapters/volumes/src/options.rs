//! `volumes`'s options: what the operator writes in its table in `adapters.toml` (or with
//! `--set` for the served binary).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use powerstrip_adapter::builtin::{Options as Raw, duration, parse_options};
use serde::Deserialize;

use crate::names::check_profile;
pub use crate::transfer::Compression;

/// Which backend keeps the datasets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// btrfs when the pool is on btrfs, directories otherwise.
    Auto,
    /// btrfs (the pool must be on btrfs, or `image` must make it so).
    Btrfs,
    /// Plain directories.
    Directory,
}

/// A btrfs filesystem on a loop file, made and mounted at the pool by the adapter when
/// the pool is not a btrfs mount already.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// The file.
    pub file: PathBuf,
    /// Its size.
    pub size: u64,
}

/// A profile: what `name@profile` gives a new dataset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    /// The most bytes the dataset may hold (`None`: as much as the pool has).
    pub size: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WrittenProfile {
    #[serde(default)]
    size: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WrittenImage {
    file: PathBuf,
    size: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Written {
    #[serde(default)]
    pool: Option<PathBuf>,
    #[serde(default = "default_backend")]
    backend: BackendChoice,
    #[serde(default)]
    image: Option<WrittenImage>,
    #[serde(default)]
    profiles: BTreeMap<String, WrittenProfile>,
    #[serde(default)]
    default_profile: Option<String>,
    #[serde(default)]
    listen: Option<String>,
    #[serde(default = "default_move_timeout", with = "duration")]
    move_timeout: Duration,
    #[serde(default = "default_reconcile", with = "duration")]
    reconcile: Duration,
    #[serde(default)]
    plugin: Option<String>,
    #[serde(default)]
    compression: Compression,
}

fn default_backend() -> BackendChoice {
    BackendChoice::Auto
}
fn default_move_timeout() -> Duration {
    Duration::from_secs(240)
}
fn default_reconcile() -> Duration {
    Duration::from_secs(10)
}

/// The port moves are served on, when `listen` does not say.
pub const DEFAULT_PORT: u16 = 9378;

/// Where the transfer server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    /// The node's address (`--node-address`), on this port.
    NodeAddress(u16),
    /// This address.
    At(SocketAddr),
}

/// The adapter's options, validated.
#[derive(Clone, Debug)]
pub struct Options {
    /// The pool's directory (`None`: `<adapter state dir>/pool`).
    pub pool: Option<PathBuf>,
    /// Which backend.
    pub backend: BackendChoice,
    /// A loop-file btrfs filesystem to make and mount at the pool, if it is not one.
    pub image: Option<Image>,
    /// The profiles, by name.
    pub profiles: BTreeMap<String, Profile>,
    /// The profile of datasets created without one (`docker volume create` without
    /// `-o profile=`), if any.
    pub default_profile: Option<String>,
    /// Where moves are served.
    pub listen: Listen,
    /// How long a move may take before the request waiting on it gets a 504.
    pub move_timeout: Duration,
    /// How often everything is reconciled (besides at every container event).
    pub reconcile: Duration,
    /// The volume plugin's driver name (`docker volume create -d NAME`), when it is
    /// served.
    pub plugin: Option<String>,
    /// How this node asks for the streams it pulls to be compressed.
    pub compression: Compression,
}

impl Options {
    /// Parses and validates `raw`.
    pub fn parse(raw: &Raw) -> Result<Options, String> {
        let written: Written = parse_options(raw)?;
        let mut profiles = BTreeMap::new();
        for (name, profile) in &written.profiles {
            check_profile(name).map_err(|e| format!("profiles: {e}"))?;
            let size = match &profile.size {
                None => None,
                Some(text) => {
                    let size =
                        parse_size(text).map_err(|e| format!("profiles.{name}.size: {e}"))?;
                    if size < 1 << 20 {
                        return Err(format!("profiles.{name}.size: {text:?} is less than 1 MiB"));
                    }
                    Some(size)
                }
            };
            profiles.insert(name.clone(), Profile { size });
        }
        if let Some(default) = &written.default_profile
            && !profiles.contains_key(default)
        {
            return Err(format!(
                "default_profile: {default:?} is not one of the profiles ({})",
                list(&profiles)
            ));
        }
        let image = match written.image {
            None => None,
            Some(image) => {
                let size = parse_size(&image.size).map_err(|e| format!("image.size: {e}"))?;
                if size < 128 << 20 {
                    return Err(format!(
                        "image.size: {:?} is less than 128 MiB (btrfs needs room for its own metadata)",
                        image.size
                    ));
                }
                if !image.file.is_absolute() {
                    return Err(format!(
                        "image.file: {:?} must be an absolute path",
                        image.file
                    ));
                }
                if written.backend == BackendChoice::Directory {
                    return Err(
                        "image: a btrfs image makes no sense with backend = \"directory\"".into(),
                    );
                }
                Some(Image {
                    file: image.file,
                    size,
                })
            }
        };
        if let Some(pool) = &written.pool
            && !pool.is_absolute()
        {
            return Err(format!("pool: {pool:?} must be an absolute path"));
        }
        let listen = match written.listen.as_deref() {
            None => Listen::NodeAddress(DEFAULT_PORT),
            Some(text) => match text.strip_prefix(':') {
                Some(port) => Listen::NodeAddress(
                    port.parse()
                        .map_err(|_| format!("listen: {text:?} must be HOST:PORT or :PORT"))?,
                ),
                None => Listen::At(text.parse().map_err(|_| {
                    format!("listen: {text:?} must be HOST:PORT (an IP address) or :PORT")
                })?),
            },
        };
        if written.move_timeout < Duration::from_secs(1) {
            return Err("move_timeout: must be at least 1s".into());
        }
        if let Some(plugin) = &written.plugin
            && (plugin.is_empty()
                || !plugin
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(format!(
                "plugin: {plugin:?} must be a driver name: letters, digits, '-', '_' or '.'"
            ));
        }
        Ok(Options {
            pool: written.pool,
            backend: written.backend,
            image,
            profiles,
            default_profile: written.default_profile,
            listen,
            move_timeout: written.move_timeout,
            reconcile: written.reconcile,
            plugin: written.plugin,
            compression: written.compression,
        })
    }

    /// The profile called `name`, or a message naming the profiles there are.
    pub fn profile(&self, name: &str) -> Result<&Profile, String> {
        self.profiles.get(name).ok_or_else(|| {
            if self.profiles.is_empty() {
                format!("profile {name:?} does not exist: no profiles are configured")
            } else {
                format!(
                    "profile {name:?} does not exist; the profiles are {}",
                    list(&self.profiles)
                )
            }
        })
    }
}

fn list(profiles: &BTreeMap<String, Profile>) -> String {
    if profiles.is_empty() {
        return "none".into();
    }
    profiles
        .iter()
        .map(|(name, p)| match p.size {
            Some(size) => format!("{name} ({})", format_size(size)),
            None => format!("{name} (no limit)"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses a size: bytes (`1048576`), or a number with `K`, `M`, `G`, `T` (powers of 1024;
/// `KiB`, `MB`... read the same way).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. \"512M\", \"10G\")"))?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use K, M, G or T)"
            ));
        }
    };
    let bytes = number * 2f64.powi(shift);
    if !bytes.is_finite() || !(1.0..=1e18).contains(&bytes) {
        return Err(format!("{text:?} is out of range"));
    }
    // Whole bytes: the fraction of a byte a "1.5K" could leave is dropped.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok(bytes as u64)
}

/// A size for people: `1 GiB`, `512 MiB`, `1.5 GiB`, `100 B`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || (value.fract() == 0.0) {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
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
    fn sizes_read_as_operators_write_them() {
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("1X").unwrap_err().contains("unknown unit"));
        assert!(parse_size("lots").is_err());
        assert_eq!(format_size(1 << 30), "1 GiB");
        assert_eq!(format_size(3 << 29), "1.5 GiB");
    }

    #[test]
    fn profiles_and_their_mistakes() {
        let o = options(serde_json::json!({
            "profiles": { "gold": { "size": "1G" }, "bronze": {} },
            "default_profile": "bronze"
        }))
        .unwrap();
        assert_eq!(o.profile("gold").unwrap().size, Some(1 << 30));
        let e = o.profile("platinum").unwrap_err();
        assert!(
            e.contains("\"platinum\"")
                && e.contains("gold (1 GiB)")
                && e.contains("bronze (no limit)"),
            "{e}"
        );
        let refused = |v| options(v).unwrap_err();
        assert!(refused(serde_json::json!({"default_profile": "x"})).contains("default_profile"));
        assert!(
            refused(serde_json::json!({"profiles": {"gold": {"size": "1K"}}}))
                .contains("less than 1 MiB")
        );
        assert!(refused(serde_json::json!({"listen": "nowhere"})).contains("listen"));
        assert!(refused(serde_json::json!({"colour": "blue"})).contains("colour"));
        assert_eq!(
            options(serde_json::json!({"listen": ":9000"}))
                .unwrap()
                .listen,
            Listen::NodeAddress(9000)
        );
    }
}
