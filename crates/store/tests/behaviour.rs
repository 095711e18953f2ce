//! One behavioural suite, run against both backends: the embedded file and a real etcd
//! (one member shared by this test binary; each test under a prefix of its own). Each
//! `both!` line below is two tests, `embedded_<name>` and `etcd_<name>`.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use powerstrip_store::helpers::{Change, KeptLease, campaign, holder, update};
use powerstrip_store::{
    Embedded, Etcd, EtcdOptions, Event, Expect, Store, StoreError, Swap, Watch,
};

/// A store for one test, and what keeps it alive.
struct Fixture {
    store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
}

fn embedded() -> Option<Fixture> {
    let dir = tempfile::tempdir().unwrap();
    let store = Embedded::open(&dir.path().join("store.redb")).unwrap();
    Some(Fixture {
        store: Arc::new(store),
        _dir: Some(dir),
    })
}

async fn etcd_with_prefix(prefix: &str) -> Option<Fixture> {
    let cluster = powerstrip_testenv::etcd::shared()?;
    let mut options = EtcdOptions::new(cluster.endpoints());
    options.prefix = format!("/test-{}-{prefix}/", std::process::id());
    Some(Fixture {
        store: Arc::new(Etcd::connect(&options).await.unwrap()),
        _dir: None,
    })
}

/// Declares `embedded_<name>` and `etcd_<name>`, each running `<name>(store)`.
macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                let Some(fixture) = super::embedded() else {
                    return;
                };
                super::$name(fixture.store.clone()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn etcd() {
                let Some(fixture) = super::etcd_with_prefix(stringify!($name)).await else {
                    return;
                };
                super::$name(fixture.store.clone()).await;
            }
        }
    };
}

both!(puts_gets_lists_and_deletes_with_etcd_revisions);
both!(create_if_absent_races_have_one_winner);
both!(cas_races_have_one_winner_per_revision);
both!(concurrent_updates_lose_no_increment);
both!(delete_at_a_stale_revision_deletes_nothing);
both!(watch_from_a_revision_replays_exactly_what_was_missed);
both!(a_resumed_watch_has_no_gap_and_no_duplicate);
both!(lease_expiry_removes_keys_and_watchers_see_it);
both!(revoking_a_lease_deletes_its_keys_at_once);
both!(prefixes_are_isolated);
both!(one_holder_per_role_and_the_next_takes_over);

async fn puts_gets_lists_and_deletes_with_etcd_revisions(store: Arc<dyn Store>) {
    assert_eq!(store.get("a/1").await.unwrap(), None);
    let r1 = store.put("a/1", b"one", None).await.unwrap();
    let r2 = store.put("a/2", b"two", None).await.unwrap();
    let r3 = store.put("a/1", b"uno", None).await.unwrap();
    assert!(r1 < r2 && r2 < r3, "{r1} {r2} {r3}");
    let kv = store.get("a/1").await.unwrap().unwrap();
    assert_eq!(kv.value, b"uno");
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (r1, r3, 2)
    );
    assert_eq!(kv.lease, None);
    let listing = store.list("a/").await.unwrap();
    let keys: Vec<&str> = listing.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["a/1", "a/2"]);
    assert!(listing.revision >= r3);
    assert!(store.delete("a/1", None).await.unwrap());
    assert!(!store.delete("a/1", None).await.unwrap(), "already gone");
    assert_eq!(store.get("a/1").await.unwrap(), None);
    // Created anew: a new create revision and version 1.
    let r4 = store.put("a/1", b"again", None).await.unwrap();
    let kv = store.get("a/1").await.unwrap().unwrap();
    assert_eq!((kv.create_revision, kv.version), (r4, 1));
    assert!(matches!(
        store.put("", b"x", None).await,
        Err(StoreError::InvalidKey { .. })
    ));
}

async fn create_if_absent_races_have_one_winner(store: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .swap(
                        "claims/10.50.0.2",
                        Expect::Absent,
                        format!("c{i}").as_bytes(),
                        None,
                    )
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut winners = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await.unwrap() {
            Swap::Done(_) => winners.push(format!("c{i}")),
            Swap::Failed(current) => assert!(current.is_some()),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let kv = store.get("claims/10.50.0.2").await.unwrap().unwrap();
    assert_eq!(kv.value, winners[0].as_bytes());
}

async fn cas_races_have_one_winner_per_revision(store: Arc<dyn Store>) {
    let base = store.put("cas/k", b"0", None).await.unwrap();
    for round in 0..5 {
        let at = store.get("cas/k").await.unwrap().unwrap().mod_revision;
        let tasks: Vec<_> = (0..12)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let value = format!("r{round}-t{i}");
                    store
                        .swap("cas/k", Expect::At(at), value.as_bytes(), None)
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut done = 0;
        for task in tasks {
            match task.await.unwrap() {
                Swap::Done(revision) => {
                    assert!(revision > at);
                    done += 1;
                }
                Swap::Failed(Some(now)) => assert!(now.mod_revision > at),
                Swap::Failed(None) => panic!("the key vanished"),
            }
        }
        assert_eq!(done, 1, "round {round}: {done} winners at revision {at}");
    }
    assert!(store.get("cas/k").await.unwrap().unwrap().mod_revision > base);
}

async fn concurrent_updates_lose_no_increment(store: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                for _ in 0..25 {
                    update(store.as_ref(), "counter", None, |kv| {
                        let n: u64 =
                            kv.map_or(0, |kv| String::from_utf8_lossy(&kv.value).parse().unwrap());
                        Ok::<_, std::convert::Infallible>(Change::Put(
                            (n + 1).to_string().into_bytes(),
                        ))
                    })
                    .await
                    .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let kv = store.get("counter").await.unwrap().unwrap();
    assert_eq!(kv.value, b"200");
    assert_eq!(kv.version, 200);
}

async fn delete_at_a_stale_revision_deletes_nothing(store: Arc<dyn Store>) {
    let first = store.put("d/k", b"1", None).await.unwrap();
    let second = store.put("d/k", b"2", None).await.unwrap();
    assert!(!store.delete("d/k", Some(first)).await.unwrap());
    assert_eq!(store.get("d/k").await.unwrap().unwrap().value, b"2");
    assert!(store.delete("d/k", Some(second)).await.unwrap());
    assert_eq!(store.get("d/k").await.unwrap(), None);
}

/// The next event, within a bound.
async fn next(watch: &mut Watch) -> Event {
    tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("an event within 10 s")
        .expect("the watch goes on")
        .unwrap()
}

async fn watch_from_a_revision_replays_exactly_what_was_missed(store: Arc<dyn Store>) {
    let mut revisions = Vec::new();
    for i in 0..5 {
        revisions.push(store.put(&format!("w/{i}"), b"v", None).await.unwrap());
    }
    store.put("other/x", b"v", None).await.unwrap();
    store.delete("w/1", None).await.unwrap();
    let mut watch = store.watch("w/", revisions[2]).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(next(&mut watch).await);
    }
    let described: Vec<String> = seen
        .iter()
        .map(|e| match e {
            Event::Put(kv) => format!("put {}", kv.key),
            Event::Delete { key, .. } => format!("delete {key}"),
        })
        .collect();
    assert_eq!(described, ["put w/2", "put w/3", "put w/4", "delete w/1"]);
    assert_eq!(seen[0].revision(), revisions[2]);
    // Then live changes, in order.
    let live = store.put("w/5", b"v", None).await.unwrap();
    let event = next(&mut watch).await;
    assert_eq!((event.key(), event.revision()), ("w/5", live));
    // Watching from 0 starts with the next change.
    let mut fresh = store.watch("w/", 0).await.unwrap();
    let later = store.put("w/6", b"v", None).await.unwrap();
    assert_eq!(next(&mut fresh).await.revision(), later);
}

async fn a_resumed_watch_has_no_gap_and_no_duplicate(store: Arc<dyn Store>) {
    let start = store.put("r/0", b"0", None).await.unwrap();
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 1..=60 {
                store.put(&format!("r/{i}"), b"v", None).await.unwrap();
                if i % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
    };
    // Read in pieces, dropping the watch and resuming from the last revision + 1.
    let mut keys = Vec::new();
    let mut from = start;
    while keys.len() < 61 {
        let mut watch = store.watch("r/", from).await.unwrap();
        for _ in 0..7 {
            if keys.len() == 61 {
                break;
            }
            let event = next(&mut watch).await;
            keys.push(event.key().to_owned());
            from = event.revision() + 1;
        }
    }
    writer.await.unwrap();
    let expected: Vec<String> = (0..=60).map(|i| format!("r/{i}")).collect();
    assert_eq!(keys, expected);
}

async fn lease_expiry_removes_keys_and_watchers_see_it(store: Arc<dyn Store>) {
    let ttl = Duration::from_secs(2);
    let lease = store.grant(ttl).await.unwrap();
    let put = store.put("l/node", b"alive", Some(lease)).await.unwrap();
    assert_eq!(
        store.get("l/node").await.unwrap().unwrap().lease,
        Some(lease)
    );
    let mut watch = store.watch("l/", put + 1).await.unwrap();
    // Kept alive, it outlives its TTL...
    let kept_until = Instant::now() + ttl + Duration::from_millis(500);
    while Instant::now() < kept_until {
        store.keep_alive(lease).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(store.get("l/node").await.unwrap().is_some());
    // ... and once left alone, it ends within TTL + 1 s (etcd may round up a second).
    let left = Instant::now();
    let event = tokio::time::timeout(ttl + Duration::from_secs(3), watch.next())
        .await
        .expect("the lease ends")
        .unwrap()
        .unwrap();
    assert!(
        matches!(&event, Event::Delete { key, .. } if key == "l/node"),
        "{event:?}"
    );
    assert!(
        left.elapsed() <= ttl + Duration::from_secs(2),
        "{:?}",
        left.elapsed()
    );
    assert_eq!(store.get("l/node").await.unwrap(), None);
    let kept = store.keep_alive(lease).await;
    assert!(
        matches!(kept, Err(StoreError::LeaseGone { .. })),
        "{kept:?}"
    );
    assert!(matches!(
        store.put("l/late", b"x", Some(lease)).await,
        Err(StoreError::LeaseGone { .. })
    ));
}

async fn revoking_a_lease_deletes_its_keys_at_once(store: Arc<dyn Store>) {
    let lease = KeptLease::grant(store.clone(), Duration::from_secs(30))
        .await
        .unwrap();
    for i in 0..3 {
        store
            .put(&format!("v/{i}"), b"x", Some(lease.id()))
            .await
            .unwrap();
    }
    store.put("v/kept", b"x", None).await.unwrap();
    lease.revoke().await.unwrap();
    let keys: Vec<String> = store
        .list("v/")
        .await
        .unwrap()
        .kvs
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(keys, ["v/kept"]);
}

async fn prefixes_are_isolated(store: Arc<dyn Store>) {
    store.put("net/blue", b"1", None).await.unwrap();
    store.put("net/blue2", b"2", None).await.unwrap();
    store.put("netx/blue", b"3", None).await.unwrap();
    let keys: BTreeSet<String> = store
        .list("net/")
        .await
        .unwrap()
        .kvs
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["net/blue".into(), "net/blue2".into()])
    );
    let mut watch = store.watch("net/", 0).await.unwrap();
    store.put("netx/red", b"4", None).await.unwrap();
    let inside = store.put("net/red", b"5", None).await.unwrap();
    assert_eq!(next(&mut watch).await.revision(), inside);
}

async fn one_holder_per_role_and_the_next_takes_over(store: Arc<dyn Store>) {
    let ttl = Duration::from_secs(2);
    let first = campaign(store.clone(), "reconciler", "node-a", ttl)
        .await
        .unwrap();
    assert_eq!(
        holder(store.as_ref(), "reconciler")
            .await
            .unwrap()
            .as_deref(),
        Some("node-a")
    );
    let waiting = {
        let store = store.clone();
        tokio::spawn(async move { campaign(store, "reconciler", "node-b", ttl).await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "two holders at once");
    first.resign().await.unwrap();
    let second = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the waiting candidate takes over")
        .unwrap();
    assert_eq!(second.role(), "reconciler");
    assert_eq!(
        holder(store.as_ref(), "reconciler")
            .await
            .unwrap()
            .as_deref(),
        Some("node-b")
    );
}

#[tokio::test]
async fn an_unreachable_etcd_is_a_prompt_error_naming_the_store() {
    let port = powerstrip_testenv::free_port();
    let mut options = EtcdOptions::new([format!("http://127.0.0.1:{port}")]);
    options.timeout = Duration::from_millis(500);
    let started = Instant::now();
    let error = match Etcd::connect(&options).await {
        Err(error) => error,
        Ok(store) => store.put("k", b"v", None).await.unwrap_err(),
    };
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let message = error.to_string();
    assert!(
        message.contains(&format!("etcd http://127.0.0.1:{port}")),
        "{message}"
    );
}
