//! What users write, read: dataset names, `name@profile`, `name@snapshot-<id>`, and the
//! container create's `Binds` and `Mounts` that name them. Pure: no store, no disk.
//!
//! A `Binds` source or a `volume` mount's `Source` is the adapter's when it carries an `@`
//! (Docker's own volume names cannot) or names a dataset the cluster knows; everything
//! else — host paths, Docker's named volumes, anonymous volumes — is Docker's and passes
//! untouched.

use std::fmt;

use powerstrip_adapter::docker::{Bind, Mount};
use serde_json::{Map, Value};

/// The prefix of a snapshot reference after `@`: `demo-copy@snapshot-f23ca986`.
pub const SNAPSHOT_PREFIX: &str = "snapshot-";

/// What a volume source asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Spec {
    /// `demo`: dataset `demo`, if the cluster knows it (otherwise Docker's volume).
    Existing(String),
    /// `demo@gold`: dataset `demo`, created with profile `gold` if it does not exist.
    WithProfile {
        /// The dataset.
        name: String,
        /// The profile.
        profile: String,
    },
    /// `demo-copy@snapshot-f23ca986`: a new dataset from a snapshot (an id or a unique
    /// prefix of one).
    FromSnapshot {
        /// The new dataset.
        name: String,
        /// The snapshot id or prefix.
        snapshot: String,
    },
}

impl Spec {
    /// The dataset's name.
    pub fn name(&self) -> &str {
        match self {
            Spec::Existing(name)
            | Spec::WithProfile { name, .. }
            | Spec::FromSnapshot { name, .. } => name,
        }
    }

    /// Whether the source can only be the adapter's (it has an `@`).
    pub fn is_explicit(&self) -> bool {
        !matches!(self, Spec::Existing(_))
    }
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Spec::Existing(name) => write!(f, "{name}"),
            Spec::WithProfile { name, profile } => write!(f, "{name}@{profile}"),
            Spec::FromSnapshot { name, snapshot } => {
                write!(f, "{name}@{SNAPSHOT_PREFIX}{snapshot}")
            }
        }
    }
}

/// Checks a dataset name: what Docker accepts as a volume name (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`),
/// at most 64 characters.
pub fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = name.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "dataset name {name:?} must be 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit"
        ))
    }
}

/// Checks a profile name (the same characters as a dataset name).
pub fn check_profile(profile: &str) -> Result<(), String> {
    check_name(profile).map_err(|_| {
        format!(
            "profile name {profile:?} must be 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    })
}

/// Parses a volume source: `demo`, `demo@gold`, `demo-copy@snapshot-f23ca986`. `Ok(None)`
/// for what is Docker's for sure (a path); `Err` for a source with an `@` that is not
/// well formed (it cannot be Docker's either).
pub fn parse(source: &str) -> Result<Option<Spec>, String> {
    if source.starts_with('/') || source.starts_with('.') || source.is_empty() {
        return Ok(None);
    }
    let Some((name, after)) = source.split_once('@') else {
        // Docker's name rules: anything else is not a name we could hold.
        return Ok(check_name(source)
            .ok()
            .map(|()| Spec::Existing(source.to_owned())));
    };
    check_name(name).map_err(|e| format!("{source:?}: {e}"))?;
    if let Some(snapshot) = after.strip_prefix(SNAPSHOT_PREFIX) {
        let ok = !snapshot.is_empty()
            && snapshot.len() <= 64
            && snapshot
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase());
        if !ok {
            return Err(format!(
                "{source:?}: {SNAPSHOT_PREFIX}{snapshot:?} must name a snapshot by its id or a prefix of it (lower-case hexadecimal)"
            ));
        }
        return Ok(Some(Spec::FromSnapshot {
            name: name.to_owned(),
            snapshot: snapshot.to_owned(),
        }));
    }
    if after.is_empty() {
        return Err(format!(
            "{source:?}: nothing after '@'; write NAME@PROFILE or NAME@{SNAPSHOT_PREFIX}ID"
        ));
    }
    check_profile(after).map_err(|e| format!("{source:?}: {e}"))?;
    Ok(Some(Spec::WithProfile {
        name: name.to_owned(),
        profile: after.to_owned(),
    }))
}

/// Where a create names a volume source: a `Binds` entry or a `Mounts` entry, by index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    /// `HostConfig.Binds[i]` (`-v`).
    Bind(usize),
    /// `HostConfig.Mounts[i]` (`--mount type=volume`).
    Mount(usize),
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Bind(i) => write!(f, "HostConfig.Binds[{i}]"),
            Place::Mount(i) => write!(f, "HostConfig.Mounts[{i}]"),
        }
    }
}

/// A volume source found in a create, with where it is and what it asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Use {
    /// Where.
    pub place: Place,
    /// What was written.
    pub source: String,
    /// What it asks for.
    pub spec: Spec,
    /// The path inside the container.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// The volume sources of a create that could be the adapter's, in order (`Binds` first).
/// Sources with an `@` that do not parse are an error naming where they are.
pub fn uses(binds: &[Bind], mounts: &[Mount]) -> Result<Vec<Use>, String> {
    let mut out = Vec::new();
    for (i, bind) in binds.iter().enumerate() {
        let place = Place::Bind(i);
        if let Some(spec) = parse(&bind.source).map_err(|e| format!("{place}: {e}"))? {
            out.push(Use {
                place,
                source: bind.source.clone(),
                spec,
                target: bind.target.clone(),
                read_only: bind.read_only(),
            });
        }
    }
    for (i, mount) in mounts.iter().enumerate() {
        if mount.kind.as_deref() != Some("volume") {
            continue;
        }
        let place = Place::Mount(i);
        let Some(source) = mount.source.as_deref() else {
            continue;
        };
        if let Some(spec) = parse(source).map_err(|e| format!("{place}: {e}"))? {
            out.push(Use {
                place,
                source: source.to_owned(),
                spec,
                target: mount.target.clone().unwrap_or_default(),
                read_only: mount.read_only.unwrap_or(false),
            });
        }
    }
    Ok(out)
}

/// Bind options that can be carried to a bind mount of a dataset, and how.
fn bind_option(option: &str, propagation: &mut Option<String>) -> Result<(), String> {
    match option {
        "" | "ro" | "rw" | "nocopy" => Ok(()),
        "shared" | "slave" | "private" | "rshared" | "rslave" | "rprivate" => {
            *propagation = Some(option.to_owned());
            Ok(())
        }
        "z" | "Z" => Err(format!(
            "option {option:?} (SELinux relabelling) is not supported on datasets"
        )),
        other => Err(format!("unknown option {other:?}")),
    }
}

/// Rewrites a create's `Binds` and `Mounts` so that every used dataset is a bind mount of
/// its path on this node (`paths`: for each entry of `used`, in order): dataset `Binds`
/// entries leave `Binds` and become `Mounts` entries of type `bind` (which, unlike a
/// `Binds` source, Docker never creates when it is missing — a container started behind
/// the proxy's back while its dataset lives elsewhere fails instead of writing into an
/// empty directory); dataset `volume` mounts become `bind` mounts, keeping their other keys
/// but `VolumeOptions`. Returns the new `Binds` and `Mounts`.
pub fn rewrite(
    binds: &[Bind],
    mounts: &[Mount],
    used: &[Use],
    paths: &[String],
) -> Result<(Vec<Bind>, Vec<Mount>), String> {
    let mut new_binds = Vec::new();
    let mut new_mounts: Vec<Mount> = Vec::new();
    for (i, bind) in binds.iter().enumerate() {
        let Some(k) = used.iter().position(|u| u.place == Place::Bind(i)) else {
            new_binds.push(bind.clone());
            continue;
        };
        let mut propagation = None;
        for option in bind.options.as_deref().unwrap_or_default().split(',') {
            bind_option(option, &mut propagation)
                .map_err(|e| format!("{}: {:?}: {e}", Place::Bind(i), bind.to_string()))?;
        }
        let mut mount = Mount::new("bind", paths[k].clone(), bind.target.clone());
        if bind.read_only() {
            mount.read_only = Some(true);
        }
        if let Some(propagation) = propagation {
            let mut options = Map::new();
            options.insert("Propagation".into(), Value::String(propagation));
            mount
                .extra
                .insert("BindOptions".into(), Value::Object(options));
        }
        new_mounts.push(mount);
    }
    for (i, mount) in mounts.iter().enumerate() {
        let Some(k) = used.iter().position(|u| u.place == Place::Mount(i)) else {
            new_mounts.push(mount.clone());
            continue;
        };
        let mut mount = mount.clone();
        mount.kind = Some("bind".into());
        mount.source = Some(paths[k].clone());
        mount
            .extra
            .retain(|key, _| !key.eq_ignore_ascii_case("VolumeOptions"));
        new_mounts.push(mount);
    }
    Ok((new_binds, new_mounts))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sources_are_read_as_users_write_them() {
        assert_eq!(parse("/srv/data").unwrap(), None);
        assert_eq!(parse("./rel").unwrap(), None);
        assert_eq!(parse("demo").unwrap(), Some(Spec::Existing("demo".into())));
        assert_eq!(
            parse("myVol@gold").unwrap(),
            Some(Spec::WithProfile {
                name: "myVol".into(),
                profile: "gold".into()
            })
        );
        assert_eq!(
            parse("demoVol-snap@snapshot-f23ca986").unwrap(),
            Some(Spec::FromSnapshot {
                name: "demoVol-snap".into(),
                snapshot: "f23ca986".into()
            })
        );
        // Not a name Docker or we could hold: Docker's to refuse.
        assert_eq!(parse("bad name").unwrap(), None);
    }

    #[test]
    fn a_malformed_at_source_is_an_error_that_says_what_to_write() {
        for (source, says) in [
            ("demo@", "nothing after '@'"),
            ("@gold", "dataset name \"\""),
            ("demo@snapshot-", "must name a snapshot"),
            ("demo@snapshot-XYZ", "must name a snapshot"),
            ("demo@go ld", "profile name"),
        ] {
            let e = parse(source).unwrap_err();
            assert!(e.contains(says), "{source}: {e}");
        }
    }

    #[test]
    fn dataset_binds_become_bind_mounts_and_the_rest_stays() {
        let binds = vec![
            Bind::parse("/host:/h").unwrap(),
            Bind::parse("demo@gold:/data:ro").unwrap(),
            Bind::parse("dockers:/d").unwrap(),
            Bind::parse("other:/o:rshared").unwrap(),
        ];
        let mut volume = Mount::new("volume", "snapy@snapshot-abc", "/s");
        volume
            .extra
            .insert("VolumeOptions".into(), serde_json::json!({"NoCopy": true}));
        let mounts = vec![Mount::new("tmpfs", "", "/t"), volume];
        let all = uses(&binds, &mounts).unwrap();
        // `dockers` is a candidate too: whether it is a dataset is the store's to say.
        let ours: Vec<Use> = all
            .into_iter()
            .filter(|u| u.spec.name() != "dockers")
            .collect();
        assert_eq!(ours.len(), 3);
        assert!(ours[0].read_only);
        let paths = vec![
            "/pool/datasets/a".into(),
            "/pool/datasets/b".into(),
            "/pool/datasets/c".into(),
        ];
        let (new_binds, new_mounts) = rewrite(&binds, &mounts, &ours, &paths).unwrap();
        assert_eq!(
            new_binds
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["/host:/h", "dockers:/d"]
        );
        assert_eq!(new_mounts.len(), 4);
        assert_eq!(new_mounts[0], {
            let mut m = Mount::new("bind", "/pool/datasets/a", "/data");
            m.read_only = Some(true);
            m
        });
        assert_eq!(
            new_mounts[1].extra.get("BindOptions"),
            Some(&serde_json::json!({"Propagation": "rshared"}))
        );
        assert_eq!(new_mounts[2].kind.as_deref(), Some("tmpfs"));
        assert_eq!(new_mounts[3].kind.as_deref(), Some("bind"));
        assert_eq!(new_mounts[3].source.as_deref(), Some("/pool/datasets/c"));
        assert!(new_mounts[3].extra.get("VolumeOptions").is_none());
    }

    #[test]
    fn bind_options_a_dataset_cannot_honour_are_named() {
        let binds = vec![Bind::parse("demo@gold:/data:z").unwrap()];
        let used = uses(&binds, &[]).unwrap();
        let e = rewrite(&binds, &[], &used, &["/p".into()]).unwrap_err();
        assert!(
            e.contains("HostConfig.Binds[0]") && e.contains("SELinux"),
            "{e}"
        );
    }
}
