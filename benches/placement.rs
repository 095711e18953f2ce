//! The placement adapter's constraint language: what evaluating and parsing expressions
//! costs.
//!
//!     cargo bench --bench placement    # ~1 minute; writes benches/results/placement.md
//!
//! - `placement-select`: `expr::select` over 1,000 nodes, each with ~90 facts shaped like
//!   Facter's flattened output (`architecture`, `os.family`, `os.release.major`,
//!   `processorcount`, `memorysize_mb`, `zone`, `system_overload_10min`, `kernelrelease`,
//!   `hostname`, `networking.interfaces.eth0.mtu`, ...; values differ from node to node,
//!   drawn from a seeded generator). One expression of each kind (literal `==` and `!=`,
//!   glob, regular expression, case-insensitive regular expression, soft), then a mix of
//!   10 and a mix of 100. The expressions are chosen so that many nodes pass them all:
//!   the report states how many remain and how many node × expression evaluations `select`
//!   made, since a hard expression only looks at the nodes the ones before it kept.
//! - `placement-hook`: what the pre-hook evaluates per container create, from the `Env`
//!   entries to the verdict: `from_env` of a create's environment (2 constraints among 6
//!   entries) and `select` on this one node.
//! - `placement-parse`: `from_env` of 1, 10 and 100 expressions (the ones measured above);
//!   their regular expressions come from the adapter's cache of compiled ones after the
//!   first call, as they do on a proxy that has seen the pattern once.
//!
//! Measurement: 30 samples, 1 s of warm-up and 3 s of measurement per benchmark (command
//! line options such as `--measurement-time 5` override). With `--bench` (as `cargo bench`
//! passes it) and every benchmark run, the report replaces the "Constraint evaluation"
//! section of `benches/results/placement.md`, from criterion's median estimates;
//! `benches/placement.py` writes the file's other section.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use criterion::Criterion;
use powerstrip_placement::expr::{self, Expr, Node, Value};

/// How many nodes `select` chooses among.
const NODES: usize = 1000;
/// The report's file, and the heading of the section this benchmark owns.
const REPORT: &str = "benches/results/placement.md";
const TITLE: &str = "# Placement adapter: constraint evaluation and pre-hook latency";
const SECTION: &str = "## Constraint evaluation";

const SELECT: &str = "placement-select";
const HOOK: &str = "placement-hook";
const PARSE: &str = "placement-parse";

/// One expression of each kind, alone: (benchmark id, what it is, the entry).
const SINGLE: [(&str, &str, &str); 6] = [
    (
        "1-literal-eq",
        "literal `==`",
        "constraint:architecture==x86_64",
    ),
    (
        "1-literal-ne",
        "literal `!=`",
        "constraint:os.family!=RedHat",
    ),
    ("1-glob", "glob", "constraint:fqdn==node-*.example.internal"),
    (
        "1-regex",
        "regular expression",
        "constraint:system_overload_10min==/[0-2][0-5]/",
    ),
    (
        "1-regex-icase",
        "regular expression, `(?i)`",
        "constraint:node.operatingsystem==/(?i)ubuntu|debian/",
    ),
    ("1-soft", "soft glob", "constraint:zone==~us-*"),
];

/// The mix of 10: every kind, hard and soft, in the order a user might write them.
const MIX: [&str; 10] = [
    "constraint:architecture==x86_64",
    "constraint:os.family!=RedHat",
    "constraint:hostname==node-*",
    r"constraint:kernelrelease==/^(5\.15|6\.1|6\.8)\./",
    "constraint:processorcount!=2",
    "constraint:system_overload_10min==/^[0-9]{1,2}$/",
    "constraint:networking.interfaces.eth0.mtu==/^(1500|9001)$/",
    "constraint:node.operatingsystem==/(?i)debian|ubuntu/",
    "constraint:zone!=~ap-*",
    "constraint:engine.labels.tier!=~batch",
];

/// Expressions every node of [`fleet`] satisfies, for the mix of 100: the mix of 10 and
/// 90 of these.
const ALWAYS: [&str; 10] = [
    "constraint:kernel==Linux",
    "constraint:is_virtual==true",
    "constraint:virtual==kvm",
    "constraint:timezone==UTC",
    "constraint:identity.user==root",
    "constraint:identity.privileged==true",
    "constraint:engine.storagedriver==overlay2",
    "constraint:facterversion==4.3.0",
    "constraint:processors.physicalcount==1",
    "constraint:networking.interfaces.lo.mtu==65536",
];

/// `n` expression entries: the single one, the mix of 10, or the mix of 100.
fn entries(n: usize) -> Vec<String> {
    match n {
        1 => vec![SINGLE[0].2.to_owned()],
        10 => MIX.iter().map(|e| (*e).to_owned()).collect(),
        100 => {
            let mut out: Vec<String> = MIX.iter().map(|e| (*e).to_owned()).collect();
            out.extend(ALWAYS.iter().map(|e| (*e).to_owned()));
            for k in 0..10 {
                out.push(format!("constraint:zone!=zone-{k}"));
                out.push(format!("constraint:os.name!=Distro{k}"));
                out.push(format!("constraint:hostname!=db-{k}-*"));
                out.push(format!("constraint:fqdn!=*.dc{k}.example.internal"));
                out.push(format!(
                    r"constraint:networking.interfaces.eth0.ip!=/^192\.168\.{k}\./"
                ));
                out.push(format!("constraint:disks.sda.model!=/(?i)floppy-{k}/"));
                out.push(format!("constraint:zone!=~zone-{k}"));
                out.push(format!(
                    r"constraint:networking.interfaces.eth0.network!=~/^172\.{}\./",
                    k + 16
                ));
            }
            out
        }
        _ => panic!("no mix of {n}"),
    }
}

/// How many of the mix of `n` are regular expressions.
fn regexes(n: usize) -> usize {
    parse(&entries(n))
        .iter()
        .filter(|e| matches!(e.value(), Value::Regex(_)))
        .count()
}

fn parse(entries: &[String]) -> Vec<Expr> {
    let (exprs, rest) =
        expr::from_env(entries).unwrap_or_else(|e| panic!("the bench's expressions: {e}"));
    assert!(rest.is_empty());
    exprs
}

// ---------------------------------------------------------------------------------------
// the fleet

/// SplitMix64: a seeded generator, so that every run sees the same fleet.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// In `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    fn hex(&mut self, digits: usize) -> String {
        (0..digits)
            .map(|_| char::from(b"0123456789abcdef"[self.below(16) as usize]))
            .collect()
    }
}

/// A distribution's release as Facter reports it.
struct Distro {
    family: &'static str,
    name: &'static str,
    full: &'static str,
    major: &'static str,
    minor: &'static str,
    codename: &'static str,
    pretty: &'static str,
}

const DISTROS: [(u64, Distro); 5] = [
    (
        45,
        Distro {
            family: "Debian",
            name: "Debian",
            full: "12.8",
            major: "12",
            minor: "8",
            codename: "bookworm",
            pretty: "Debian GNU/Linux 12 (bookworm)",
        },
    ),
    (
        25,
        Distro {
            family: "Debian",
            name: "Ubuntu",
            full: "22.04",
            major: "22",
            minor: "04",
            codename: "jammy",
            pretty: "Ubuntu 22.04.5 LTS",
        },
    ),
    (
        10,
        Distro {
            family: "Debian",
            name: "Ubuntu",
            full: "24.04",
            major: "24",
            minor: "04",
            codename: "noble",
            pretty: "Ubuntu 24.04.1 LTS",
        },
    ),
    (
        15,
        Distro {
            family: "RedHat",
            name: "Rocky",
            full: "9.4",
            major: "9",
            minor: "4",
            codename: "Blue Onyx",
            pretty: "Rocky Linux 9.4 (Blue Onyx)",
        },
    ),
    (
        5,
        Distro {
            family: "RedHat",
            name: "CentOS",
            full: "7.9.2009",
            major: "7",
            minor: "9",
            codename: "Core",
            pretty: "CentOS Linux 7 (Core)",
        },
    ),
];

const ZONES: [&str; 6] = [
    "us-east-1a",
    "us-east-1b",
    "us-east-1c",
    "eu-west-1a",
    "eu-west-1b",
    "ap-south-1a",
];

/// Node `i`'s facts: about 90, named as Facter 4 names them with `--show-legacy`, plus the
/// adapter's built-in ones and an external `zone`.
fn facts(i: usize, rng: &mut Rng) -> BTreeMap<String, String> {
    let mut f = BTreeMap::new();
    let mut set = |key: &str, value: String| {
        f.insert(key.to_owned(), value);
    };
    let arm = rng.below(100) < 15;
    let mut roll = rng.below(100);
    let distro = DISTROS
        .iter()
        .find(|(weight, _)| {
            let hit = roll < *weight;
            roll = roll.saturating_sub(*weight);
            hit
        })
        .map_or(&DISTROS[0].1, |(_, d)| d);
    let (arch, deb_arch) = if arm {
        ("aarch64", "arm64")
    } else {
        ("x86_64", "amd64")
    };
    let kernelrelease = match (distro.name, distro.major) {
        ("Debian", _) => format!("6.1.0-{}-cloud-{deb_arch}", 25 + rng.below(16)),
        ("Ubuntu", "22") => format!("5.15.0-{}-generic", 80 + rng.below(45)),
        ("Ubuntu", _) => format!("6.8.0-{}-generic", 30 + rng.below(20)),
        ("Rocky", _) => format!("5.14.0-{}.el9_4.{arch}", 362 + rng.below(65)),
        _ => format!("3.10.0-1160.{}.1.el7.{arch}", 80 + rng.below(40)),
    };
    let kernelversion = kernelrelease
        .split('-')
        .next()
        .unwrap_or_default()
        .to_owned();
    let kernelmaj = kernelversion
        .rsplit_once('.')
        .map_or("", |(m, _)| m)
        .to_owned();
    let cpus = *rng.pick(&[2u64, 4, 8, 16, 32, 64]);
    let mib_per_cpu = *rng.pick(&[2048u64, 4096, 8192]);
    let total = cpus * mib_per_cpu * (1 << 20) - rng.below(400 << 20);
    let available = total / 100 * (20 + rng.below(70));
    let zone = *rng.pick(&ZONES);
    let region = &zone[..zone.len() - 1];
    let hostname = format!("node-{i:04}");
    let domain = format!("{region}.example.internal");
    let (b, c) = (rng.below(256), 1 + rng.below(254));
    let ip = format!(
        "10.{}.{b}.{c}",
        10 + ZONES.iter().position(|z| *z == zone).unwrap_or(0)
    );
    let mac = format!(
        "02:{}:{}:{}:{}:{}",
        rng.hex(2),
        rng.hex(2),
        rng.hex(2),
        rng.hex(2),
        rng.hex(2)
    );
    let mtu = if rng.below(10) < 6 { "1500" } else { "9001" };
    // Mostly light, a tenth of the nodes busy.
    let overload = |rng: &mut Rng| {
        let busy = if rng.below(10) == 0 {
            50 + rng.below(100)
        } else {
            0
        };
        (rng.below(25) + rng.below(25) + busy).to_string()
    };
    let uptime = 3600 + rng.below(90 * 86400);
    let disk_gib = *rng.pick(&[20u64, 50, 100, 200, 500]);
    let model = if arm {
        "Neoverse-N1"
    } else {
        *rng.pick(&[
            "AMD EPYC 7B13",
            "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz",
        ])
    };

    set("architecture", arch.into());
    set("hardwaremodel", arch.into());
    set("hardwareisa", arch.into());
    set("os.architecture", deb_arch.into());
    set("os.hardware", arch.into());
    set("os.family", distro.family.into());
    set("osfamily", distro.family.into());
    set("os.name", distro.name.into());
    set("operatingsystem", distro.name.into());
    set("os.release.full", distro.full.into());
    set("os.release.major", distro.major.into());
    set("os.release.minor", distro.minor.into());
    set("operatingsystemrelease", distro.full.into());
    set("operatingsystemmajrelease", distro.major.into());
    set("os.distro.codename", distro.codename.into());
    set("os.distro.id", distro.name.into());
    set("os.distro.description", distro.pretty.into());
    set("os.distro.release.full", distro.full.into());
    set(
        "os.selinux.enabled",
        (distro.family == "RedHat").to_string(),
    );
    set("kernel", "Linux".into());
    set("kernelrelease", kernelrelease.clone());
    set("kernelversion", kernelversion);
    set("kernelmajversion", kernelmaj);
    set("processorcount", cpus.to_string());
    set("processors.count", cpus.to_string());
    set("processors.physicalcount", "1".into());
    set("processors.isa", arch.into());
    set("processors.models.0", model.into());
    set(
        "processors.speed",
        format!("{}.{:02} GHz", 2 + rng.below(2), rng.below(100)),
    );
    let mb = |bytes: u64| format!("{:.2}", bytes as f64 / f64::from(1 << 20));
    let gib = |bytes: u64| format!("{:.2} GiB", bytes as f64 / f64::from(1 << 30));
    set("memorysize_mb", mb(total));
    set("memoryfree_mb", mb(available));
    set("memory.system.total_bytes", total.to_string());
    set("memory.system.available_bytes", available.to_string());
    set("memory.system.used_bytes", (total - available).to_string());
    set("memory.system.total", gib(total));
    set("memory.system.available", gib(available));
    set(
        "memory.system.capacity",
        format!("{:.2}%", (total - available) as f64 * 100.0 / total as f64),
    );
    set("zone", zone.into());
    set("region", region.into());
    set("system_overload_1min", overload(rng));
    set("system_overload_5min", overload(rng));
    set("system_overload_10min", overload(rng));
    set(
        "load_averages.15m",
        format!("{:.2}", rng.below(cpus * 100) as f64 / 100.0),
    );
    set("hostname", hostname.clone());
    set("fqdn", format!("{hostname}.{domain}"));
    set("domain", domain.clone());
    set("networking.hostname", hostname.clone());
    set("networking.fqdn", format!("{hostname}.{domain}"));
    set("networking.domain", domain);
    set("networking.primary", "eth0".into());
    set("networking.ip", ip.clone());
    set("networking.mac", mac.clone());
    set("networking.mtu", mtu.into());
    set("networking.netmask", "255.255.0.0".into());
    set("networking.network", format!("10.{b}.0.0"));
    set("networking.interfaces.eth0.ip", ip.clone());
    set("networking.interfaces.eth0.mac", mac.clone());
    set("networking.interfaces.eth0.mtu", mtu.into());
    set("networking.interfaces.eth0.netmask", "255.255.0.0".into());
    set("networking.interfaces.eth0.network", format!("10.{b}.0.0"));
    set("networking.interfaces.eth0.bindings.0.address", ip);
    set(
        "networking.interfaces.eth0.bindings.0.netmask",
        "255.255.0.0".into(),
    );
    set(
        "networking.interfaces.eth0.bindings.0.network",
        format!("10.{b}.0.0"),
    );
    set(
        "networking.interfaces.eth0.ip6",
        format!(
            "fe80::{}:{}ff:fe{}:{}",
            rng.hex(2),
            rng.hex(2),
            rng.hex(2),
            rng.hex(4)
        ),
    );
    set("networking.interfaces.eth0.scope6", "link".into());
    set("networking.interfaces.lo.ip", "127.0.0.1".into());
    set("networking.interfaces.lo.mtu", "65536".into());
    set("networking.interfaces.lo.netmask", "255.0.0.0".into());
    set("networking.interfaces.lo.network", "127.0.0.0".into());
    // Not every node has the same interfaces.
    if rng.below(10) < 7 {
        set("networking.interfaces.docker0.ip", "172.17.0.1".into());
        set("networking.interfaces.docker0.mtu", "1500".into());
        set("networking.interfaces.docker0.network", "172.17.0.0".into());
    }
    if rng.below(10) < 2 {
        set("networking.interfaces.eth1.ip", format!("192.168.{b}.{c}"));
        set(
            "networking.interfaces.eth1.mac",
            format!("02:{}:00:00:00:01", rng.hex(2)),
        );
        set("networking.interfaces.eth1.mtu", "9000".into());
        set("networking.interfaces.eth1.netmask", "255.255.255.0".into());
    }
    set("disks.sda.size", format!("{disk_gib}.00 GiB"));
    set("disks.sda.size_bytes", (disk_gib << 30).to_string());
    set("disks.sda.model", "PersistentDisk".into());
    set("disks.sda.vendor", "Google".into());
    set("disks.sda.type", "ssd".into());
    set("mountpoints./.device", "/dev/sda1".into());
    set("mountpoints./.filesystem", "ext4".into());
    set(
        "mountpoints./.size_bytes",
        ((disk_gib << 30) - (1 << 28)).to_string(),
    );
    set(
        "mountpoints./.used_bytes",
        ((disk_gib << 30) / 100 * (5 + rng.below(80))).to_string(),
    );
    set("dmi.manufacturer", "Google".into());
    set("dmi.product.name", "Google Compute Engine".into());
    set("is_virtual", "true".into());
    set("virtual", "kvm".into());
    set("timezone", "UTC".into());
    set("uptime_seconds", uptime.to_string());
    set("uptime_days", (uptime / 86400).to_string());
    set("system_uptime.seconds", uptime.to_string());
    set(
        "ssh.ed25519.fingerprints.sha256",
        format!("SSHFP 4 2 {}", rng.hex(64)),
    );
    set("facterversion", "4.3.0".into());
    set("identity.user", "root".into());
    set("identity.privileged", "true".into());
    set("node.cpus", cpus.to_string());
    set("node.memory_available_bytes", available.to_string());
    set("node.name", hostname);
    set("node.kernelversion", kernelrelease);
    set("node.operatingsystem", distro.pretty.into());
    set("engine.storagedriver", "overlay2".into());
    set(
        "engine.labels.tier",
        (*rng.pick(&["web", "db", "batch"])).into(),
    );
    f
}

/// The fleet's facts and ids, built once; [`Node`]s borrow them.
struct Fleet {
    ids: Vec<String>,
    facts: Vec<BTreeMap<String, String>>,
}

fn fleet() -> Fleet {
    let mut rng = Rng(0x5eed);
    let facts: Vec<_> = (0..NODES).map(|i| facts(i, &mut rng)).collect();
    let ids = (0..NODES).map(|_| rng.hex(25)).collect();
    Fleet { ids, facts }
}

impl Fleet {
    fn nodes(&self) -> Vec<Node<'_>> {
        self.ids
            .iter()
            .zip(&self.facts)
            .map(|(id, facts)| Node {
                id,
                name: facts.get("hostname").map_or("", String::as_str),
                facts,
                containers: &[],
                images: &[],
            })
            .collect()
    }
}

/// How many node × expression evaluations `select` makes: each hard expression looks at
/// the candidates the ones before it kept, then each soft one at what is left.
fn evaluations(exprs: &[Expr], nodes: &[Node<'_>]) -> usize {
    let mut candidates: Vec<&Node<'_>> = nodes.iter().collect();
    let mut count = 0;
    for e in exprs.iter().filter(|e| !e.is_soft()) {
        count += candidates.len();
        candidates.retain(|n| e.matches(n));
    }
    for e in exprs.iter().filter(|e| e.is_soft()) {
        count += candidates.len();
        let kept: Vec<&Node<'_>> = candidates
            .iter()
            .copied()
            .filter(|n| e.matches(n))
            .collect();
        if !kept.is_empty() {
            candidates = kept;
        }
    }
    count
}

// ---------------------------------------------------------------------------------------
// the benchmarks

/// A row of the evaluation table.
struct Case {
    id: String,
    what: String,
    exprs: usize,
    nodes: usize,
    remaining: usize,
    evaluations: usize,
}

fn select_benches(c: &mut Criterion, fleet: &Fleet) -> Vec<Case> {
    let nodes = fleet.nodes();
    let mut cases = Vec::new();
    let mut group = c.benchmark_group(SELECT);
    let mut run = |id: String, what: String, entries: Vec<String>| {
        let exprs = parse(&entries);
        let selection = expr::select(&exprs, &nodes);
        assert!(selection.is_satisfied(), "{id}: no node satisfies it");
        cases.push(Case {
            id: id.clone(),
            what,
            exprs: exprs.len(),
            nodes: nodes.len(),
            remaining: selection.nodes.len(),
            evaluations: evaluations(&exprs, &nodes),
        });
        group.bench_function(&id, |b| {
            b.iter(|| {
                expr::select(black_box(&exprs), black_box(&nodes))
                    .nodes
                    .len()
            });
        });
    };
    for (id, what, entry) in SINGLE {
        run(id.to_owned(), what.to_owned(), vec![entry.to_owned()]);
    }
    run(
        "10-mix".into(),
        "mix: 3 literal, 1 glob, 4 regex (1 `(?i)`), 2 soft".into(),
        entries(10),
    );
    run(
        "100-mix".into(),
        "the 10, 10 literal `==` and 80 `!=`/glob/regex/soft that every node passes".into(),
        entries(100),
    );
    group.finish();
    cases
}

/// The environment `docker run -e constraint:zone==bench -e constraint:node.operatingsystem==/(?i)linux/`
/// sends, with the image's own entries.
const HOOK_ENV: [&str; 6] = [
    "constraint:zone==bench",
    "constraint:node.operatingsystem==/(?i)linux/",
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOSTNAME=web",
    "LANG=C.UTF-8",
    "APP_MODE=production",
];

fn hook_bench(c: &mut Criterion, fleet: &Fleet) {
    let mut facts = fleet.facts[0].clone();
    facts.insert("zone".into(), "bench".into());
    facts.insert(
        "node.operatingsystem".into(),
        "Debian GNU/Linux 12 (bookworm)".into(),
    );
    let node = [Node {
        id: &fleet.ids[0],
        name: "node-0000",
        facts: &facts,
        containers: &[],
        images: &[],
    }];
    let mut group = c.benchmark_group(HOOK);
    group.bench_function("2-exprs-1-node", |b| {
        b.iter(|| {
            let (exprs, rest) =
                expr::from_env(black_box(HOOK_ENV)).unwrap_or_else(|e| panic!("{e}"));
            let selection = expr::select(&exprs, &node);
            assert!(selection.is_satisfied());
            rest.len()
        });
    });
    group.finish();
}

fn parse_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group(PARSE);
    for n in [1, 10, 100] {
        let entries = entries(n);
        group.bench_function(n.to_string(), |b| {
            b.iter(|| expr::from_env(black_box(&entries)).map(|(exprs, _)| exprs.len()));
        });
    }
    group.finish();
}

// ---------------------------------------------------------------------------------------
// the report

/// Where criterion keeps its estimates: as criterion itself decides, except that instead of
/// asking `cargo metadata` the target directory is the one this executable was built in
/// (`target/release/deps/placement-*`).
fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(target).join("criterion");
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.join("criterion")))
        .unwrap_or_else(|| PathBuf::from("target/criterion"))
}

/// The median estimate, in nanoseconds, of a benchmark measured since `since`.
fn median(group: &str, id: &str, since: SystemTime) -> Option<f64> {
    let file = criterion_dir()
        .join(group)
        .join(id)
        .join("new/estimates.json");
    let fresh = std::fs::metadata(&file)
        .and_then(|m| m.modified())
        .is_ok_and(|at| at >= since);
    if !fresh {
        return None;
    }
    let text = std::fs::read_to_string(&file).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["median"]["point_estimate"].as_f64()
}

fn time(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{ns:.1} ns")
    }
}

fn cpu() -> (String, usize) {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = info.lines().filter(|l| l.starts_with("processor")).count();
    (model, cores)
}

/// The section, or `None` when some benchmark was not measured in this run (a filter on
/// the command line).
fn render(cases: &[Case], fleet: &Fleet, since: SystemTime) -> Option<String> {
    let (model, cores) = cpu();
    let facts: Vec<usize> = fleet.facts.iter().map(BTreeMap::len).collect();
    let (least, most) = (
        facts.iter().min().copied().unwrap_or(0),
        facts.iter().max().copied().unwrap_or(0),
    );
    let mut out = String::new();
    let _ = writeln!(out, "{SECTION}\n");
    let _ = writeln!(
        out,
        "`cargo bench --bench placement` ({}, {model}, {cores} cores; release profile; \
         criterion, 30 samples, 3 s each; median estimates).\n",
        today()
    );
    let _ = writeln!(
        out,
        "`expr::select` over {NODES} nodes, each with {least}–{most} facts shaped like \
         Facter's flattened output (`architecture`, `os.family`, `os.release.major`, \
         `processorcount`, `memorysize_mb`, `zone`, `system_overload_10min`, `kernelrelease`, \
         `hostname`, `networking.interfaces.eth0.mtu`, ...), values differing from node to \
         node. A hard expression only looks at the nodes the ones before it kept, and a soft \
         one at what the hard ones left, so the table counts the node × expression \
         evaluations `select` made; *remaining* is how many nodes satisfy everything.\n"
    );
    let _ = writeln!(
        out,
        "| expressions | what | nodes | remaining | evaluations | per select | per evaluation |"
    );
    let _ = writeln!(out, "|---:|---|---:|---:|---:|---:|---:|");
    for case in cases {
        let ns = median(SELECT, &case.id, since)?;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} ({:.0}%) | {} | {} | {} |",
            case.exprs,
            case.what,
            case.nodes,
            case.remaining,
            case.remaining as f64 * 100.0 / case.nodes as f64,
            case.evaluations,
            time(ns),
            time(ns / case.evaluations as f64)
        );
    }
    let _ = writeln!(
        out,
        "\nPer evaluation, most of the time goes to looking the fact up in the node's \
         `BTreeMap` of ~100 names (string comparisons down the tree), so where the key sorts \
         matters more than the operator: with their keys swapped (`os.family==Debian`, \
         `architecture!=aarch64`) the two literal rows swap their times. A soft expression \
         also collects the nodes it keeps into a new list."
    );
    let _ = writeln!(out, "\nThe single expressions:\n");
    for (_, what, entry) in SINGLE {
        let _ = writeln!(out, "- {what}: `{entry}`");
    }
    let _ = writeln!(out, "\nThe mix of 10, in order:\n");
    for entry in MIX {
        let _ = writeln!(out, "- `{entry}`");
    }
    let _ = writeln!(
        out,
        "\nThe mix of 100 adds to these {} expressions every node satisfies (`kernel==Linux`, \
         ...) and 80 generated ones, 10 each of `zone!=zone-K`, `os.name!=DistroK`, \
         `hostname!=db-K-*`, `fqdn!=*.dcK.example.internal`, \
         `networking.interfaces.eth0.ip!=/^192\\.168\\.K\\./`, \
         `disks.sda.model!=/(?i)floppy-K/`, `zone!=~zone-K` and \
         `networking.interfaces.eth0.network!=~/^172\\.(16+K)\\./`.\n",
        ALWAYS.len()
    );
    let hook = median(HOOK, "2-exprs-1-node", since)?;
    let _ = writeln!(
        out,
        "What the pre-hook evaluates per container create, from its `Env` to the verdict: \
         `from_env` of 6 entries (2 of them constraints, `zone==bench` and \
         `node.operatingsystem==/(?i)linux/`, its regular expression from the cache) and `select` on \
         this one node: **{}**.\n",
        time(hook)
    );
    let _ = writeln!(
        out,
        "`expr::from_env` (parsing and validating; regular expressions from the cache of \
         compiled ones, as on a proxy that has seen each pattern once):\n"
    );
    let _ = writeln!(out, "| entries | per call | per entry |");
    let _ = writeln!(out, "|---:|---:|---:|");
    for n in [1usize, 10, 100] {
        let ns = median(PARSE, &n.to_string(), since)?;
        let _ = writeln!(out, "| {n} | {} | {} |", time(ns), time(ns / n as f64));
    }
    let _ = writeln!(
        out,
        "\nThe 1 is `{}`; the 10 and the 100 are the mixes above, with {} and {} regular \
         expressions. Compiling a regular expression costs tens of microseconds; the cache \
         (256 patterns) makes that a once-per-pattern cost.\n",
        SINGLE[0].2,
        regexes(10),
        regexes(100)
    );
    let _ = writeln!(
        out,
        "Reproduce: `cargo bench --bench placement` (about a minute after the build); \
         `-- placement-select` for the evaluation alone. criterion keeps its own reports \
         under `target/criterion/`."
    );
    Some(out)
}

/// The date, as `YYYY-MM-DD` (UTC).
fn today() -> String {
    let days = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year}-{month:02}-{day:02}")
}

/// `doc` with the section starting at `heading` (up to the next `## `) replaced by
/// `section`, or inserted before the first other section when it has none.
fn replace_section(doc: &str, heading: &str, section: &str) -> String {
    let doc = if doc.trim().is_empty() {
        format!("{TITLE}\n\n")
    } else {
        doc.to_owned()
    };
    let starts: Vec<usize> = doc.match_indices("\n## ").map(|(at, _)| at + 1).collect();
    let section = format!("{}\n", section.trim_end());
    if let Some(&start) = starts
        .iter()
        .find(|&&at| doc[at..].lines().next() == Some(heading))
    {
        let end = starts
            .iter()
            .copied()
            .find(|&at| at > start)
            .unwrap_or(doc.len());
        let gap = if end < doc.len() { "\n" } else { "" };
        return format!("{}{section}{gap}{}", &doc[..start], &doc[end..]);
    }
    match starts.first() {
        Some(&first) => format!("{}{section}\n{}", &doc[..first], &doc[first..]),
        None => format!("{}\n\n{section}", doc.trim_end()),
    }
}

fn main() {
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let mut criterion = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let since = SystemTime::now();
    let fleet = fleet();
    let cases = select_benches(&mut criterion, &fleet);
    hook_bench(&mut criterion, &fleet);
    parse_benches(&mut criterion);
    criterion.final_summary();
    if !benchmarking {
        return;
    }
    let Some(section) = render(&cases, &fleet, since) else {
        eprintln!("not every benchmark ran: {REPORT} left as it is");
        return;
    };
    print!("\n{section}");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join(REPORT);
    let doc = std::fs::read_to_string(&out).unwrap_or_default();
    if let Err(e) = std::fs::write(&out, replace_section(&doc, SECTION, &section)) {
        eprintln!("cannot write {}: {e}", out.display());
    }
}
