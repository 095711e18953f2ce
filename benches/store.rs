//! The cluster store's speed, in one run: compare-and-swap operations per second and watch
//! latency (a put until a watcher sees it), for the embedded backend, a single-member etcd
//! and a 3-member etcd (Debian's etcd-server, started on loopback by this benchmark and
//! removed when it ends).
//!
//!     cargo bench --bench store                 # ~1 minute; writes benches/results/store.md
//!     cargo bench --bench store -- --seconds 5  # longer CAS runs
//!
//! CAS: 64 tasks, each compare-and-swapping a key of its own in a loop (the revision it
//! expects is the one its last swap returned), for `--seconds` (default 3): every swap is a
//! durable, acknowledged write. Watch: one watcher on a prefix, one writer putting 2000 keys
//! at about 1000 a second; the latency of each is from just before its put to the moment the
//! watcher holds its event.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use powerstrip_store::{Embedded, Etcd, EtcdOptions, Expect, Store, Swap};
use powerstrip_testenv::etcd::EtcdCluster;

const TASKS: usize = 64;
const WATCHED: usize = 2000;

struct Figures {
    backend: &'static str,
    cas_per_second: f64,
    watch_p50: Duration,
    watch_p99: Duration,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seconds: u64 = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let mut figures = Vec::new();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let embedded: Arc<dyn Store> = Arc::new(
            Embedded::open(&dir.path().join("store.redb")).unwrap_or_else(|e| panic!("{e}")),
        );
        figures.push(measure("embedded", embedded, seconds).await);
        if !powerstrip_testenv::require("etcd", powerstrip_testenv::etcd::INSTALL_HINT) {
            return;
        }
        for (name, size) in [("etcd, 1 member", 1), ("etcd, 3 members", 3)] {
            let cluster = EtcdCluster::start(size);
            let store: Arc<dyn Store> = Arc::new(
                Etcd::connect(&EtcdOptions::new(cluster.endpoints()))
                    .await
                    .unwrap_or_else(|e| panic!("{e}")),
            );
            figures.push(measure(name, store, seconds).await);
        }
    });
    let report = render(&figures, seconds);
    print!("{report}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results/store.md");
    if let Err(e) = std::fs::write(&out, report) {
        eprintln!("cannot write {}: {e}", out.display());
    }
}

async fn measure(backend: &'static str, store: Arc<dyn Store>, seconds: u64) -> Figures {
    eprintln!("{backend}: CAS for {seconds} s ...");
    let cas_per_second = cas(store.clone(), Duration::from_secs(seconds)).await;
    eprintln!("{backend}: watch latency ...");
    let (watch_p50, watch_p99) = watch_latency(store).await;
    Figures {
        backend,
        cas_per_second,
        watch_p50,
        watch_p99,
    }
}

async fn cas(store: Arc<dyn Store>, duration: Duration) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (store, stop, done) = (store.clone(), stop.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let key = format!("bench/cas/{task}");
            let mut expect = match store.get(&key).await {
                Ok(Some(kv)) => Expect::At(kv.mod_revision),
                _ => Expect::Absent,
            };
            let mut n: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                match store.swap(&key, expect, &n.to_le_bytes(), None).await {
                    Ok(Swap::Done(revision)) => {
                        expect = Expect::At(revision);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Swap::Failed(current)) => {
                        expect = current.map_or(Expect::Absent, |kv| Expect::At(kv.mod_revision));
                    }
                    Err(e) => panic!("CAS failed: {e}"),
                }
            }
        }));
    }
    // Warm up, then count.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = done.load(Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    let counted = done.load(Ordering::Relaxed) - before;
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    counted as f64 / elapsed.as_secs_f64()
}

async fn watch_latency(store: Arc<dyn Store>) -> (Duration, Duration) {
    let mut watch = store
        .watch("bench/watch/", 0)
        .await
        .unwrap_or_else(|e| panic!("watch: {e}"));
    let sent: Arc<std::sync::Mutex<HashMap<String, Instant>>> = Arc::default();
    let writer = {
        let (store, sent) = (store.clone(), sent.clone());
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_millis(1));
            for i in 0..WATCHED {
                ticker.tick().await;
                let key = format!("bench/watch/{i}");
                sent.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(key.clone(), Instant::now());
                if let Err(e) = store.put(&key, b"x", None).await {
                    panic!("put: {e}");
                }
            }
        })
    };
    let mut latencies = Vec::with_capacity(WATCHED);
    while latencies.len() < WATCHED {
        let event = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .unwrap_or_else(|_| panic!("no event for 10 s"))
            .unwrap_or_else(|| panic!("the watch ended"))
            .unwrap_or_else(|e| panic!("watch: {e}"));
        let seen = Instant::now();
        let at = sent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(event.key())
            .copied();
        if let Some(at) = at {
            latencies.push(seen - at);
        }
    }
    let _ = writer.await;
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    (at(0.50), at(0.99))
}

fn render(figures: &[Figures], seconds: u64) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let etcd = std::process::Command::new("etcd")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|v| v.lines().next().map(str::to_owned))
        .unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(out, "# Cluster store: CAS throughput and watch latency\n");
    let _ = writeln!(
        out,
        "`cargo bench --bench store` ({cpu}, {cores} cores; {etcd}; debug assertions off, \
         release profile). CAS: {TASKS} tasks, a key each, {seconds} s. Watch: {WATCHED} puts \
         at ~1000/s, put → watcher.\n"
    );
    let _ = writeln!(out, "| backend | CAS/s | watch p50 | watch p99 |");
    let _ = writeln!(out, "|---|---:|---:|---:|");
    for f in figures {
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.2} ms | {:.2} ms |",
            f.backend,
            f.cas_per_second,
            f.watch_p50.as_secs_f64() * 1e3,
            f.watch_p99.as_secs_f64() * 1e3
        );
    }
    out
}
