//! Datasets as a state machine, pure: what is recorded of a dataset, a snapshot and a
//! move, and every decision two nodes could race on — who may use a dataset, when it may
//! move, when it may go. The caller reads a record, asks a method here, and writes the
//! result back with a compare-and-swap (`crate::state`), so the store settles every race.
//!
//! A dataset has one **primary**: the node whose pool holds its current bytes. Containers
//! on that node hold **leases** on it while they run (or are about to). A **move** is a
//! two-phase hand-off (Flocker's): the target records that it is moving the dataset here
//! (with a ticket the source checks), pulls a snapshot of it, and only once it holds a
//! complete copy switches the primary to itself; the source keeps its copy until then, and
//! deletes it only when it sees that the switch happened.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A dataset, as the cluster records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dataset {
    /// Its name (`demo`).
    pub name: String,
    /// Its id in every node's pool (stable across moves).
    pub id: String,
    /// The profile it was created with, if any.
    pub profile: Option<String>,
    /// Its size limit, if any.
    pub limit: Option<u64>,
    /// The node (id) whose pool holds it.
    pub primary: String,
    /// When it was created (seconds since the epoch).
    pub created: u64,
    /// The snapshot it was cloned from, if any.
    #[serde(default)]
    pub origin: Option<String>,
    /// Who uses it, by holder (a container id, `reservation:<token>` before the container
    /// exists, or `mount:<id>` for Docker's plugin path).
    #[serde(default)]
    pub leases: BTreeMap<String, Lease>,
    /// A move in progress, if any.
    #[serde(default)]
    pub moving: Option<Move>,
    /// For each node, the last snapshot it shares with the primary (the parent of the next
    /// incremental move there).
    #[serde(default)]
    pub bases: BTreeMap<String, String>,
    /// How the last move went, if it moved.
    #[serde(default)]
    pub last_move: Option<MoveStats>,
}

/// What a finished move sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveStats {
    /// From this node.
    pub from: String,
    /// To this node.
    pub to: String,
    /// Bytes of the snapshot stream (what `btrfs send` wrote).
    pub bytes: u64,
    /// Bytes on the wire (compressed).
    pub wire: u64,
    /// Whether it was sent as an increment on a snapshot both held.
    pub incremental: bool,
    /// How long it took, in milliseconds, from the request to the switch of the primary
    /// (the stream, received durably, then the dataset made from it).
    pub millis: u64,
    /// When it finished (seconds since the epoch).
    pub at: u64,
}

/// A holder's use of a dataset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The node (id) the holder runs on: always the primary.
    pub node: String,
    /// When it was taken (seconds since the epoch).
    pub since: u64,
}

/// A move in progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    /// From this node (the primary when it began).
    pub from: String,
    /// To this node (the one pulling).
    pub to: String,
    /// What the source checks before it sends.
    pub ticket: String,
    /// The snapshot being sent.
    pub snapshot: String,
    /// When it began (seconds since the epoch).
    pub started: u64,
    /// Bytes received so far, as last recorded.
    #[serde(default)]
    pub progress: u64,
}

/// A user's snapshot: read-only, on the node that was the dataset's primary when it was
/// taken.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Its id (hexadecimal; users may name it by a unique prefix).
    pub id: String,
    /// The dataset it was taken of.
    pub dataset: String,
    /// That dataset's id.
    pub dataset_id: String,
    /// The node whose pool holds it.
    pub node: String,
    /// When it was taken (seconds since the epoch).
    pub created: u64,
}

/// Why a dataset cannot be used, moved or removed now.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Conflict {
    /// A holder on another node uses it.
    #[error("dataset {dataset} is in use by {holder} on node {node}")]
    Leased {
        /// The dataset.
        dataset: String,
        /// The holder (a container id, shortened for people).
        holder: String,
        /// The node (its name, when the caller gave names).
        node: String,
    },
    /// It is being moved.
    #[error("dataset {dataset} is being moved from node {from} to node {to} (since {age}s)")]
    Moving {
        /// The dataset.
        dataset: String,
        /// From.
        from: String,
        /// To.
        to: String,
        /// How long ago the move began.
        age: u64,
    },
    /// The move this node began is no longer the dataset's move.
    #[error("the move of dataset {dataset} to node {to} was taken over or abandoned")]
    MoveLost {
        /// The dataset.
        dataset: String,
        /// The node that was moving it.
        to: String,
    },
}

/// What [`Dataset::acquire`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acquired {
    /// The dataset is on this node; the lease is recorded.
    Here,
    /// The dataset is on node `from` and nobody uses it there: move it here first, then
    /// acquire again.
    Elsewhere {
        /// Its primary.
        from: String,
    },
}

/// What the caller knows of the cluster when deciding: the live nodes, their names (for
/// messages), and how old a lease or a move may grow before it is void.
pub struct View<'a> {
    /// Now (seconds since the epoch).
    pub now: u64,
    /// Whether a node (id) is live (registered).
    pub live: &'a (dyn Fn(&str) -> bool + Sync),
    /// A node's name for messages (its id when unknown).
    pub name: &'a (dyn Fn(&str) -> String + Sync),
    /// A move older than this (seconds) is abandoned.
    pub move_timeout: u64,
}

/// The short form of a holder for people: a container id's first 12 characters.
pub fn short_holder(holder: &str) -> String {
    if let Some(token) = holder.strip_prefix("reservation:") {
        return format!("a container being created (reservation {token})");
    }
    if let Some(mount) = holder.strip_prefix("mount:") {
        return format!("container {}", &mount[..mount.len().min(12)]);
    }
    format!("container {}", &holder[..holder.len().min(12)])
}

impl Dataset {
    /// A new dataset on `node`.
    pub fn new(
        name: &str,
        id: &str,
        profile: Option<&str>,
        limit: Option<u64>,
        node: &str,
        now: u64,
    ) -> Dataset {
        Dataset {
            name: name.to_owned(),
            id: id.to_owned(),
            profile: profile.map(str::to_owned),
            limit,
            primary: node.to_owned(),
            created: now,
            origin: None,
            leases: BTreeMap::new(),
            moving: None,
            bases: BTreeMap::new(),
            last_move: None,
        }
    }

    /// The move in progress, unless it is abandoned (older than the move timeout, or its
    /// target is gone).
    pub fn live_move(&self, view: &View<'_>) -> Option<&Move> {
        self.moving.as_ref().filter(|m| {
            view.now.saturating_sub(m.started) <= view.move_timeout && (view.live)(&m.to)
        })
    }

    /// The first lease that keeps the dataset where it is, from the point of view of
    /// `node`: one held on a live node other than `node`.
    fn blocking_lease(&self, node: &str, view: &View<'_>) -> Option<Conflict> {
        self.leases
            .iter()
            .find(|(_, lease)| lease.node != node && (view.live)(&lease.node))
            .map(|(holder, lease)| Conflict::Leased {
                dataset: self.name.clone(),
                holder: short_holder(holder),
                node: (view.name)(&lease.node),
            })
    }

    fn moving_conflict(&self, view: &View<'_>) -> Option<Conflict> {
        self.live_move(view).map(|m| Conflict::Moving {
            dataset: self.name.clone(),
            from: (view.name)(&m.from),
            to: (view.name)(&m.to),
            age: view.now.saturating_sub(m.started),
        })
    }

    /// `holder` on `node` wants to use the dataset. Records the lease when the dataset is
    /// on `node`; says where it is when it must move first; refuses while a holder on
    /// another node uses it or a move is under way.
    pub fn acquire(
        &mut self,
        holder: &str,
        node: &str,
        view: &View<'_>,
    ) -> Result<Acquired, Conflict> {
        if let Some(conflict) = self.moving_conflict(view) {
            return Err(conflict);
        }
        if let Some(conflict) = self.blocking_lease(node, view) {
            return Err(conflict);
        }
        if self.primary != node {
            return Ok(Acquired::Elsewhere {
                from: self.primary.clone(),
            });
        }
        // Leases of nodes that are gone hold nothing.
        self.leases.retain(|_, lease| (view.live)(&lease.node));
        self.leases.insert(
            holder.to_owned(),
            Lease {
                node: node.to_owned(),
                since: view.now,
            },
        );
        Ok(Acquired::Here)
    }

    /// Drops `holder`'s lease (nothing when it has none). True when there was one.
    pub fn release(&mut self, holder: &str) -> bool {
        self.leases.remove(holder).is_some()
    }

    /// Renames a lease: the reservation a create took becomes the container's.
    pub fn rebind(&mut self, from: &str, to: &str) -> bool {
        match self.leases.remove(from) {
            Some(lease) => {
                self.leases.insert(to.to_owned(), lease);
                true
            }
            None => false,
        }
    }

    /// Node `to` begins moving the dataset to itself, sending `snapshot`, with `ticket`.
    /// Refused while someone on the primary uses it or another move is live; a move that
    /// was abandoned is taken over. Nothing to do (`Ok(false)`) when it is on `to` already.
    pub fn begin_move(
        &mut self,
        to: &str,
        ticket: &str,
        snapshot: &str,
        view: &View<'_>,
    ) -> Result<bool, Conflict> {
        if let Some(conflict) = self.moving_conflict(view) {
            return Err(conflict);
        }
        if let Some(conflict) = self.blocking_lease(to, view) {
            return Err(conflict);
        }
        if self.primary == to {
            self.moving = None;
            return Ok(false);
        }
        self.moving = Some(Move {
            from: self.primary.clone(),
            to: to.to_owned(),
            ticket: ticket.to_owned(),
            snapshot: snapshot.to_owned(),
            started: view.now,
            progress: 0,
        });
        Ok(true)
    }

    /// Records a move's progress; refused when the move is no longer `ticket`'s.
    pub fn progress(&mut self, ticket: &str, bytes: u64) -> Result<(), Conflict> {
        match &mut self.moving {
            Some(m) if m.ticket == ticket => {
                m.progress = bytes;
                Ok(())
            }
            _ => Err(self.move_lost(ticket)),
        }
    }

    fn move_lost(&self, _ticket: &str) -> Conflict {
        Conflict::MoveLost {
            dataset: self.name.clone(),
            to: self
                .moving
                .as_ref()
                .map_or_else(String::new, |m| m.to.clone()),
        }
    }

    /// The target holds a complete copy: it becomes the primary, and the snapshot it
    /// received is the base both nodes share. Refused when the move is no longer
    /// `ticket`'s (it was abandoned and taken over).
    pub fn finish_move(&mut self, ticket: &str, stats: Option<MoveStats>) -> Result<(), Conflict> {
        let Some(m) = self.moving.take_if(|m| m.ticket == ticket) else {
            return Err(self.move_lost(ticket));
        };
        if stats.is_some() {
            self.last_move = stats;
        }
        // Leases left on the old primary were void already (the move began without them).
        self.leases.clear();
        self.bases.clear();
        self.bases.insert(m.from.clone(), m.snapshot.clone());
        self.bases.insert(m.to.clone(), m.snapshot.clone());
        self.primary = m.to;
        Ok(())
    }

    /// The move `ticket` failed: forget it (nothing when it is no longer the move).
    pub fn abort_move(&mut self, ticket: &str) -> bool {
        self.moving.take_if(|m| m.ticket == ticket).is_some()
    }

    /// Whether the dataset may be removed now.
    pub fn removable(&self, view: &View<'_>) -> Result<(), Conflict> {
        if let Some(conflict) = self.moving_conflict(view) {
            return Err(conflict);
        }
        // Any live lease, on any node, keeps it.
        match self
            .leases
            .iter()
            .find(|(_, lease)| (view.live)(&lease.node))
        {
            Some((holder, lease)) => Err(Conflict::Leased {
                dataset: self.name.clone(),
                holder: short_holder(holder),
                node: (view.name)(&lease.node),
            }),
            None => Ok(()),
        }
    }

    /// The snapshot a move to `to` can send as an increment on, if both ends share one.
    pub fn base_for(&self, to: &str) -> Option<&str> {
        let there = self.bases.get(to)?;
        (self.bases.get(&self.primary) == Some(there)).then_some(there.as_str())
    }
}

/// Resolves a snapshot id or unique prefix among `snapshots`. `Err(candidates)` when the
/// prefix is ambiguous; `Ok(None)` when nothing matches.
pub fn resolve_snapshot<'s>(
    snapshots: &'s [Snapshot],
    prefix: &str,
) -> Result<Option<&'s Snapshot>, Vec<&'s Snapshot>> {
    if let Some(exact) = snapshots.iter().find(|s| s.id == prefix) {
        return Ok(Some(exact));
    }
    let matching: Vec<&Snapshot> = snapshots
        .iter()
        .filter(|s| s.id.starts_with(prefix))
        .collect();
    match matching.len() {
        0 => Ok(None),
        1 => Ok(matching.first().copied()),
        _ => Err(matching),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn view<'a>(now: u64, live: &'a (dyn Fn(&str) -> bool + Sync)) -> View<'a> {
        View {
            now,
            live,
            name: &|id: &str| format!("<{id}>"),
            move_timeout: 100,
        }
    }

    fn all(_: &str) -> bool {
        true
    }

    #[test]
    fn a_dataset_is_used_where_it_is_and_must_move_to_be_used_elsewhere() {
        let mut d = Dataset::new("demo", "d1", Some("gold"), Some(1 << 30), "a", 0);
        let v = view(1, &all);
        assert_eq!(d.acquire("c1", "a", &v).unwrap(), Acquired::Here);
        assert_eq!(d.acquire("c2", "a", &v).unwrap(), Acquired::Here);
        // B wants it while A's containers run: refused, naming one of them and A.
        let e = d.acquire("c3", "b", &v).unwrap_err();
        assert_eq!(
            e.to_string(),
            "dataset demo is in use by container c1 on node <a>"
        );
        assert!(d.begin_move("b", "t", "m1", &v).is_err());
        d.release("c1");
        d.release("c2");
        assert_eq!(
            d.acquire("c3", "b", &v).unwrap(),
            Acquired::Elsewhere { from: "a".into() }
        );
    }

    #[test]
    fn a_move_switches_the_primary_only_when_it_finishes_and_only_for_its_ticket() {
        let mut d = Dataset::new("demo", "d1", None, None, "a", 0);
        let v = view(10, &all);
        assert!(d.begin_move("b", "t1", "m1", &v).unwrap());
        // While it moves, nobody uses it and no other move begins.
        assert!(matches!(
            d.acquire("c", "a", &v),
            Err(Conflict::Moving { .. })
        ));
        assert!(matches!(
            d.begin_move("c", "t2", "m2", &v),
            Err(Conflict::Moving { .. })
        ));
        assert_eq!(d.primary, "a");
        d.progress("t1", 42).unwrap();
        assert!(d.finish_move("t2", None).is_err());
        d.finish_move("t1", None).unwrap();
        assert_eq!(d.primary, "b");
        assert_eq!(d.moving, None);
        // Both ends share m1: the move back is incremental on it.
        assert_eq!(d.base_for("a"), Some("m1"));
        assert_eq!(d.base_for("c"), None);
        // Already there: nothing to do.
        assert!(!d.begin_move("b", "t3", "m3", &v).unwrap());
    }

    #[test]
    fn an_abandoned_move_is_taken_over_and_its_late_finish_refused() {
        let mut d = Dataset::new("demo", "d1", None, None, "a", 0);
        assert!(d.begin_move("b", "t1", "m1", &view(0, &all)).unwrap());
        // Past the move timeout: void.
        let later = view(500, &all);
        assert!(d.begin_move("c", "t2", "m2", &later).unwrap());
        assert!(matches!(
            d.finish_move("t1", None),
            Err(Conflict::MoveLost { .. })
        ));
        assert!(!d.abort_move("t1"));
        // A target that is gone abandons its move at once.
        let only_a = |n: &str| n == "a";
        let v = view(501, &only_a);
        assert_eq!(d.live_move(&v), None);
        assert!(d.begin_move("a", "t3", "m3", &v).is_ok());
    }

    #[test]
    fn leases_of_nodes_that_are_gone_hold_nothing() {
        let mut d = Dataset::new("demo", "d1", None, None, "a", 0);
        d.acquire("c1", "a", &view(1, &all)).unwrap();
        let no_a = |n: &str| n != "a";
        let v = view(2, &no_a);
        assert!(d.removable(&v).is_ok());
        assert_eq!(
            d.acquire("c2", "b", &v).unwrap(),
            Acquired::Elsewhere { from: "a".into() }
        );
        assert!(matches!(
            d.removable(&view(2, &all)),
            Err(Conflict::Leased { .. })
        ));
    }

    #[test]
    fn a_reservation_becomes_the_containers_lease() {
        let mut d = Dataset::new("demo", "d1", None, None, "a", 0);
        d.acquire("reservation:ab12", "a", &view(1, &all)).unwrap();
        let e = d.acquire("x", "b", &view(1, &all)).unwrap_err();
        assert!(e.to_string().contains("a container being created"), "{e}");
        assert!(d.rebind("reservation:ab12", "c0ffee"));
        assert!(d.leases.contains_key("c0ffee"));
        assert!(!d.rebind("reservation:ab12", "c0ffee"));
    }

    #[test]
    fn snapshots_resolve_by_unique_prefix() {
        let snap = |id: &str| Snapshot {
            id: id.into(),
            dataset: "demo".into(),
            dataset_id: "d1".into(),
            node: "a".into(),
            created: 0,
        };
        let all = vec![snap("f23ca986"), snap("f2aa0000"), snap("0011")];
        assert_eq!(
            resolve_snapshot(&all, "f23").unwrap().unwrap().id,
            "f23ca986"
        );
        assert_eq!(resolve_snapshot(&all, "0011").unwrap().unwrap().id, "0011");
        assert_eq!(resolve_snapshot(&all, "9").unwrap(), None);
        assert_eq!(resolve_snapshot(&all, "f2").unwrap_err().len(), 2);
    }
}
