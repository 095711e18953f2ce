//! What `powerstrip facts [--node NAME]` prints, from what the store holds under
//! `placement/facts/` (read by the caller, read-only).

use std::fmt::Write as _;

use powerstrip_adapter::store::KeyValue;

use crate::adapter::{FACTS_PREFIX, Published};

/// Every node's facts (or only those of the node called `node`, by name or id), one
/// `NAME=VALUE` per line under a header per node. `None` when no node matches.
pub fn facts(kvs: &[KeyValue], node: Option<&str>) -> Option<String> {
    let mut out = String::new();
    let mut any = false;
    for kv in kvs {
        let Some(id) = kv.key.strip_prefix(FACTS_PREFIX) else {
            continue;
        };
        let Ok(published) = serde_json::from_slice::<Published>(&kv.value) else {
            continue;
        };
        if node.is_some_and(|n| n != published.name && n != id) {
            continue;
        }
        any = true;
        let swarm = published
            .swarm_node_id
            .as_deref()
            .map(|s| {
                format!(
                    ", swarm node {s}{}",
                    if published.manager { " (manager)" } else { "" }
                )
            })
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "# {} ({id}{swarm}): {} facts",
            published.name,
            published.facts.len()
        );
        for (name, value) in &published.facts {
            let _ = writeln!(out, "{name}={value}");
        }
    }
    any.then_some(out)
}
