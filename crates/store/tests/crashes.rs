//! The store under crashes, with real processes: this test binary runs the scenarios, and
//! runs itself again as the process that gets killed (a writer, a lease holder), chosen by
//! `POWERSTRIP_STORE_CHILD`.
//!
//! - The embedded file under a writer killed with SIGKILL mid-loop, 20 times: it reopens
//!   every time, every acknowledged write is there, no value is torn.
//! - A holder killed with SIGKILL (etcd, and embedded across a restart): its node
//!   registration vanishes within TTL + 1 s and a watcher sees the delete.
//! - A 3-member etcd with a member killed in the middle of a write loop: no acknowledged
//!   write is lost, a counter CAS-incremented by 8 tasks ends equal to the increments
//!   acknowledged, and the member comes back and catches up.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use powerstrip_store::nodes::{Node, Registration};
use powerstrip_store::{Embedded, Etcd, EtcdOptions, Event, Expect, Store, StoreError, Swap};
use powerstrip_testenv::etcd::{EtcdCluster, INSTALL_HINT};

const CHILD: &str = "POWERSTRIP_STORE_CHILD";

/// A scenario, run to completion on the runtime it is given; a panic fails it.
type Scenario = fn(&tokio::runtime::Runtime);

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if let Ok(role) = std::env::var(CHILD) {
        runtime.block_on(child(&role));
        return;
    }
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let scenarios: [(&str, Scenario); 4] = [
        ("embedded_survives_sigkill_20_times", |rt| {
            rt.block_on(embedded_survives_sigkill_20_times())
        }),
        ("an_embedded_holders_lease_ends_across_a_restart", |rt| {
            rt.block_on(an_embedded_holders_lease_ends_across_a_restart())
        }),
        ("a_killed_etcd_holder_vanishes_within_ttl", |rt| {
            rt.block_on(a_killed_etcd_holder_vanishes_within_ttl())
        }),
        ("a_three_member_etcd_loses_no_acknowledged_write", |rt| {
            rt.block_on(a_three_member_etcd_loses_no_acknowledged_write())
        }),
    ];
    for (name, run) in scenarios {
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        let started = Instant::now();
        println!("test {name} ...");
        run(&runtime);
        println!(
            "test {name} ... ok ({:.1} s)",
            started.elapsed().as_secs_f64()
        );
    }
}

/// This binary again, as the child `role`.
fn spawn_child(role: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .env(CHILD, role)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

async fn child(role: &str) {
    let (kind, arg) = role.split_once(':').unwrap();
    match kind {
        // Writes k/0, k/1, ... forever, printing each index once its write is acknowledged.
        "embedded-writer" => {
            let store = Embedded::open(Path::new(arg)).unwrap();
            let start = store.list("k/").await.unwrap().kvs.len();
            for i in start.. {
                store.put(&key(i), &value(i), None).await.unwrap();
                println!("acked {i}");
            }
        }
        // Registers a node under a 2 s lease and keeps it alive until killed.
        "embedded-holder" | "etcd-holder" => {
            let store: Arc<dyn Store> = if kind == "etcd-holder" {
                Arc::new(Etcd::connect(&EtcdOptions::new([arg])).await.unwrap())
            } else {
                Arc::new(Embedded::open(Path::new(arg)).unwrap())
            };
            let node = Node {
                id: "holder".into(),
                name: "holder".into(),
                address: "127.0.0.1".into(),
                labels: BTreeMap::new(),
            };
            let _registration = Registration::register(store, node, Duration::from_secs(2))
                .await
                .unwrap();
            println!("registered");
            std::future::pending::<()>().await;
        }
        other => panic!("unknown child {other}"),
    }
}

fn key(i: usize) -> String {
    format!("k/{i:08}")
}

/// 1..4 KiB, all bytes derived from `i`, with `i` at both ends: a torn value shows.
fn value(i: usize) -> Vec<u8> {
    let len = 1024 + (i * 977) % 3072;
    let mut v: Vec<u8> = (0..len).map(|j| (i.wrapping_mul(31) ^ j) as u8).collect();
    v[..8].copy_from_slice(&(i as u64).to_le_bytes());
    let end = len - 8;
    v[end..].copy_from_slice(&(i as u64).to_le_bytes());
    v
}

/// Reads the child's "acked N" lines for `within`, then kills it with SIGKILL; the highest
/// index acknowledged.
fn run_then_kill(mut child: Child, within: Duration) -> Option<usize> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(n) = line.strip_prefix("acked ") {
                let _ = tx.send(n.parse::<usize>().unwrap());
            }
        }
    });
    let deadline = Instant::now() + within;
    let mut last = None;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(n) => last = Some(n),
            Err(_) => break,
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // Acknowledgements printed before the kill may still be in the pipe.
    while let Ok(n) = rx.recv_timeout(Duration::from_millis(200)) {
        last = Some(n);
    }
    last
}

async fn embedded_survives_sigkill_20_times() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let mut acked_total = None;
    for round in 0..20 {
        let child = spawn_child(&format!("embedded-writer:{}", path.display()));
        let within = Duration::from_millis(150 + (round * 37 % 200) as u64);
        if let Some(n) = run_then_kill(child, within) {
            acked_total = acked_total.max(Some(n));
        }
        // It reopens, with every acknowledged write and no torn value.
        let store = Embedded::open(&path)
            .unwrap_or_else(|e| panic!("round {round}: the file does not reopen: {e}"));
        let listing = store.list("k/").await.unwrap();
        store.close().unwrap();
        let present = listing.kvs.len();
        if let Some(n) = acked_total {
            assert!(
                present > n,
                "round {round}: {present} keys, but {} were acknowledged",
                n + 1
            );
        }
        for (i, kv) in listing.kvs.iter().enumerate() {
            assert_eq!(kv.key, key(i), "round {round}: keys are not contiguous");
            assert!(kv.value == value(i), "round {round}: {} is torn", kv.key);
        }
    }
    assert!(
        acked_total.is_some_and(|n| n > 20),
        "the writer hardly wrote"
    );
    println!(
        "  20 SIGKILLs, {} writes acknowledged, all present",
        acked_total.unwrap_or(0) + 1
    );
}

/// Waits for the child's "registered" line.
fn wait_registered(child: &mut Child) {
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "registered");
}

async fn an_embedded_holders_lease_ends_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let mut holder = spawn_child(&format!("embedded-holder:{}", path.display()));
    wait_registered(&mut holder);
    holder.kill().unwrap();
    holder.wait().unwrap();
    let killed = Instant::now();
    // The next process to open the store finds the registration, then sees it expire.
    let store = Embedded::open(&path).unwrap();
    let listing = store.list("nodes/").await.unwrap();
    let mut watch = store.watch("nodes/", listing.revision + 1).await.unwrap();
    if !listing.kvs.is_empty() {
        let event = tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .expect("the registration expires")
            .unwrap()
            .unwrap();
        assert!(matches!(event, Event::Delete { ref key, .. } if key == "nodes/holder"));
    }
    assert!(
        killed.elapsed() <= Duration::from_secs(3),
        "gone {:?} after the kill",
        killed.elapsed()
    );
    assert!(store.list("nodes/").await.unwrap().kvs.is_empty());
}

async fn a_killed_etcd_holder_vanishes_within_ttl() {
    if !powerstrip_testenv::require("etcd", INSTALL_HINT) {
        return;
    }
    let cluster = EtcdCluster::start(1);
    let store = Etcd::connect(&EtcdOptions::new(cluster.endpoints()))
        .await
        .unwrap();
    let mut holder = spawn_child(&format!("etcd-holder:{}", cluster.endpoint(0)));
    wait_registered(&mut holder);
    let listing = store.list("nodes/").await.unwrap();
    assert_eq!(listing.kvs.len(), 1, "{listing:?}");
    let mut watch = store.watch("nodes/", listing.revision + 1).await.unwrap();
    // Alive while kept alive.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(store.list("nodes/").await.unwrap().kvs.len(), 1);
    holder.kill().unwrap();
    holder.wait().unwrap();
    let killed = Instant::now();
    let event = tokio::time::timeout(Duration::from_secs(6), watch.next())
        .await
        .expect("the registration vanishes")
        .unwrap()
        .unwrap();
    assert!(matches!(event, Event::Delete { ref key, .. } if key == "nodes/holder"));
    let after = killed.elapsed();
    println!(
        "  registration gone {:.2} s after SIGKILL (TTL 2 s)",
        after.as_secs_f64()
    );
    assert!(
        after <= Duration::from_secs(3),
        "gone {after:?} after the kill"
    );
}

/// Tasks incrementing the counter.
const INCREMENTERS: usize = 8;

/// Increments `counter` once, by CAS, as task `task`'s `seq`-th increment. The value holds
/// each task's last applied increment, so that one whose acknowledgement was lost (etcd
/// applied it, the answer did not arrive) is recognised when read back, whatever others
/// wrote since — as an adapter that must not allocate twice does. True once acknowledged.
async fn increment(store: &dyn Store, task: usize, seq: i64) -> bool {
    for _ in 0..100 {
        let current = match store.get("counter").await {
            Ok(current) => current,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (count, mut last): (u64, Vec<i64>) = current
            .as_ref()
            .map(|kv| serde_json::from_slice(&kv.value).unwrap())
            .unwrap_or((0, vec![-1; INCREMENTERS]));
        if last[task] == seq {
            return true; // an earlier attempt went through
        }
        last[task] = seq;
        let expect = current.map_or(Expect::Absent, |kv| Expect::At(kv.mod_revision));
        let next = serde_json::to_vec(&(count + 1, &last)).unwrap();
        match store.swap("counter", expect, &next, None).await {
            Ok(Swap::Done(_)) => return true,
            Ok(Swap::Failed(_)) => {}
            Err(StoreError::Timeout { .. } | StoreError::Unavailable { .. }) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    false
}

async fn a_three_member_etcd_loses_no_acknowledged_write() {
    if !powerstrip_testenv::require("etcd", INSTALL_HINT) {
        return;
    }
    let mut cluster = EtcdCluster::start(3);
    let mut options = EtcdOptions::new(cluster.endpoints());
    options.timeout = Duration::from_secs(2);
    let store: Arc<dyn Store> = Arc::new(Etcd::connect(&options).await.unwrap());
    // A watch that lives through the kill: it must resume on another member by itself.
    let mut watch = store.watch("k/", 0).await.unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let increments = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for task in 0..INCREMENTERS {
        let (store, stop, increments) = (store.clone(), stop.clone(), increments.clone());
        tasks.push(tokio::spawn(async move {
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) {
                if increment(store.as_ref(), task, seq).await {
                    increments.fetch_add(1, Ordering::Relaxed);
                }
                seq += 1;
            }
        }));
    }
    let writer = {
        let (store, stop) = (store.clone(), stop.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                if store.put(&key(i), &value(i), None).await.is_ok() {
                    acked.push(i);
                }
                i += 1;
            }
            acked
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = increments.load(Ordering::Relaxed);
    cluster.kill(0);
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = increments.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let acked = writer.await.unwrap();
    println!(
        "  {before} increments before the kill, {during} in the {:.1} s after; {} writes acknowledged",
        killed.elapsed().as_secs_f64(),
        acked.len()
    );
    assert!(
        during > 0,
        "the cluster stopped taking writes with one member down"
    );
    for i in &acked {
        let kv = store.get(&key(*i)).await.unwrap();
        assert!(
            kv.is_some_and(|kv| kv.value == value(*i)),
            "acknowledged write {} is lost",
            key(*i)
        );
    }
    // The watch saw every acknowledged write once, in revision order, with no gap.
    let mut seen = std::collections::BTreeSet::new();
    let mut last = 0;
    let final_revision = store
        .list("k/")
        .await
        .unwrap()
        .kvs
        .iter()
        .map(|kv| kv.mod_revision)
        .max()
        .unwrap_or(0);
    while last < final_revision {
        let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(10), watch.next()).await
        else {
            break;
        };
        let event = event.unwrap();
        assert!(
            event.revision() > last,
            "the watch repeated or reordered revision {}",
            event.revision()
        );
        last = event.revision();
        assert!(
            seen.insert(event.key().to_owned()),
            "{} seen twice",
            event.key()
        );
    }
    let missed: Vec<String> = acked
        .iter()
        .map(|i| key(*i))
        .filter(|k| !seen.contains(k))
        .collect();
    assert!(
        missed.is_empty(),
        "the watch missed {} acknowledged writes, e.g. {:?}",
        missed.len(),
        missed.first()
    );
    let counter = store.get("counter").await.unwrap().unwrap();
    let (count, _): (u64, Vec<i64>) = serde_json::from_slice(&counter.value).unwrap();
    assert_eq!(count, increments.load(Ordering::Relaxed));
    // The member comes back and catches up: read from it alone.
    cluster.restart(0);
    let alone = Etcd::connect(&EtcdOptions::new([cluster.endpoint(0)]))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = alone.get("counter").await.ok().flatten();
        if seen.as_ref().map(|kv| &kv.value) == Some(&counter.value) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted member did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!((0..3).all(|i| cluster.is_healthy(i)));
}
