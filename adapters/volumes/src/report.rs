//! What `powerstrip volumes ls` and `powerstrip volumes inspect NAME` print, from what the
//! store holds under `volumes/` (read by the caller, read-only).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use powerstrip_adapter::store::KeyValue;

use crate::model::{Dataset, Snapshot, short_holder};
use crate::options::format_size;
use crate::state::{DATASETS, SNAPSHOTS};

fn datasets(kvs: &[KeyValue]) -> Vec<Dataset> {
    kvs.iter()
        .filter(|kv| kv.key.starts_with(DATASETS))
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect()
}

fn snapshots(kvs: &[KeyValue]) -> Vec<Snapshot> {
    kvs.iter()
        .filter(|kv| kv.key.starts_with(SNAPSHOTS))
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect()
}

fn node<'a>(names: &'a BTreeMap<String, String>, id: &'a str) -> &'a str {
    names.get(id).map_or(id, String::as_str)
}

fn state_of(d: &Dataset, names: &BTreeMap<String, String>) -> String {
    match &d.moving {
        Some(m) => format!(
            "moving to {} ({})",
            node(names, &m.to),
            format_size(m.progress)
        ),
        None if d.leases.is_empty() => "idle".into(),
        None => format!("in use ({})", d.leases.len()),
    }
}

/// One line per dataset, then one per snapshot. `names`: node id → name.
pub fn ls(kvs: &[KeyValue], names: &BTreeMap<String, String>) -> String {
    let mut out = format!(
        "{:<24} {:<10} {:<10} {:<16} {}\n",
        "DATASET", "PROFILE", "SIZE", "NODE", "STATE"
    );
    for d in datasets(kvs) {
        let _ = writeln!(
            out,
            "{:<24} {:<10} {:<10} {:<16} {}",
            d.name,
            d.profile.as_deref().unwrap_or("-"),
            d.limit.map_or_else(|| "no limit".into(), format_size),
            node(names, &d.primary),
            state_of(&d, names)
        );
    }
    let snaps = snapshots(kvs);
    if !snaps.is_empty() {
        let _ = writeln!(out, "\n{:<24} {:<24} {:<16}", "SNAPSHOT", "OF", "NODE");
        for s in snaps {
            let _ = writeln!(
                out,
                "{:<24} {:<24} {:<16}",
                format!("snapshot-{}", s.id),
                s.dataset,
                node(names, &s.node)
            );
        }
    }
    out
}

/// One dataset in full: where it is, who uses it, its move, its snapshots. `None` when
/// there is no such dataset.
pub fn inspect(kvs: &[KeyValue], names: &BTreeMap<String, String>, name: &str) -> Option<String> {
    let d = datasets(kvs).into_iter().find(|d| d.name == name)?;
    let mut out = String::new();
    let _ = writeln!(out, "dataset:  {}", d.name);
    let _ = writeln!(out, "id:       {}", d.id);
    let _ = writeln!(out, "profile:  {}", d.profile.as_deref().unwrap_or("-"));
    let _ = writeln!(
        out,
        "size:     {}",
        d.limit.map_or_else(|| "no limit".into(), format_size)
    );
    let _ = writeln!(out, "node:     {}", node(names, &d.primary));
    if let Some(origin) = &d.origin {
        let _ = writeln!(out, "from:     snapshot-{origin}");
    }
    let _ = writeln!(out, "state:    {}", state_of(&d, names));
    if let Some(m) = &d.moving {
        let _ = writeln!(
            out,
            "move:     {} → {}, {} received",
            node(names, &m.from),
            node(names, &m.to),
            format_size(m.progress)
        );
    }
    if let Some(m) = &d.last_move {
        let _ = writeln!(
            out,
            "moved:    {} → {}, {} sent{} as {} in {:.2}s",
            node(names, &m.from),
            node(names, &m.to),
            format_size(m.bytes),
            if m.incremental { " (incremental)" } else { "" },
            format_size(m.wire),
            m.millis as f64 / 1000.0
        );
    }
    for (holder, lease) in &d.leases {
        let _ = writeln!(
            out,
            "lease:    {} on {}",
            short_holder(holder),
            node(names, &lease.node)
        );
    }
    for s in snapshots(kvs).into_iter().filter(|s| s.dataset == d.name) {
        let _ = writeln!(
            out,
            "snapshot: snapshot-{} on {}",
            s.id,
            node(names, &s.node)
        );
    }
    Some(out)
}
