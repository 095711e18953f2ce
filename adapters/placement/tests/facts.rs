//! A node's facts from real sources: Facter (needs `facter`: `scripts/ensure-tools test`
//! installs it; without it those tests print "SKIPPED" — or fail, under `CI=true`),
//! external facts directories of every kind in temporary directories, `/proc` (the real
//! one and fakes), and the real Docker daemon at `/var/run/docker.sock` (skipped without
//! one, failed under `CI=true`). Fake Facters are shell scripts.
#![allow(clippy::unwrap_used, missing_docs)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use powerstrip_adapter::context::{DOCKER_API_VERSION, bollard};
use powerstrip_placement::facts::{
    DockerInfo, Facts, FactsOptions, Gatherer, HostPaths, LoadWindow, OVERLOAD_WINDOW, overload,
};
use powerstrip_testenv::{in_ci, require};
use tempfile::TempDir;

const FACTER_HINT: &str = "scripts/ensure-tools test installs facter";

/// Options with no Facter and the given external directories.
fn without_facter(dirs: &[&Path]) -> FactsOptions {
    FactsOptions {
        facter: None,
        external_facts: dirs.iter().map(|d| d.to_path_buf()).collect(),
        ..FactsOptions::default()
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// Writes an executable shell script.
fn script(path: &Path, body: &str) -> PathBuf {
    write(path, &format!("#!/bin/sh\n{body}\n"));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_owned()
}

fn command_output(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(out.status.success(), "{program} {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn get<'a>(facts: &'a Facts, name: &str) -> &'a str {
    facts.get(name).map(String::as_str).unwrap_or_else(|| {
        panic!(
            "no fact {name} among {:?}",
            facts.keys().collect::<Vec<_>>()
        )
    })
}

/// A fake `/proc` and os-release in a temporary directory.
fn fake_host(dir: &Path, loadavg: &str, cpus: usize) -> HostPaths {
    let proc = dir.join("proc");
    std::fs::create_dir_all(proc.join("sys/kernel")).unwrap();
    write(&proc.join("loadavg"), loadavg);
    let mut stat = String::from("cpu  10 20 30 40\n");
    for n in 0..cpus {
        stat.push_str(&format!("cpu{n} 1 2 3 4\n"));
    }
    stat.push_str("intr 12345\nctxt 678\n");
    write(&proc.join("stat"), &stat);
    write(
        &proc.join("meminfo"),
        "MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:    8000000 kB\n",
    );
    write(&proc.join("sys/kernel/hostname"), "fakehost\n");
    write(&proc.join("sys/kernel/osrelease"), "6.1.0-fake\n");
    let os_release = dir.join("os-release");
    write(
        &os_release,
        "NAME=\"Fake\"\nPRETTY_NAME=\"Fake GNU/Linux 1 (\\\"quoted\\\")\"\nID=fake\n",
    );
    HostPaths { proc, os_release }
}

#[tokio::test]
async fn real_facter_facts_with_legacy_names() {
    if !require("facter", FACTER_HINT) {
        return;
    }
    let mut gatherer = Gatherer::new(FactsOptions::default());
    let started = Instant::now();
    let facts = gatherer.refresh(None).await;
    let took = started.elapsed();
    eprintln!(
        "facter + built-ins: {} facts in {took:?}; sample: {:?}",
        facts.len(),
        [
            "architecture",
            "hardwaremodel",
            "is_virtual",
            "virtual",
            "os.architecture",
            "processors.count",
            "processorcount",
            "memory.system.available_bytes",
            "system_overload_1min",
            "system_overload_5min",
            "system_overload_10min",
            "node.cpus",
            "node.memory_available_bytes",
            "node.name",
            "node.kernelversion",
            "node.operatingsystem",
        ]
        .map(|name| (name, facts.get(name)))
    );
    assert!(took < Duration::from_secs(30), "facter took {took:?}");

    // Facter's hardware model is the kernel's machine; its architecture is Debian's name.
    assert_eq!(
        get(&facts, "hardwaremodel"),
        command_output("uname", ["-m"].as_slice())
    );
    assert_eq!(get(&facts, "os.hardware"), get(&facts, "hardwaremodel"));
    if Command::new("dpkg").arg("--version").output().is_ok() {
        assert_eq!(
            get(&facts, "architecture"),
            command_output("dpkg", &["--print-architecture"])
        );
    }
    assert_eq!(get(&facts, "architecture"), get(&facts, "os.architecture"));
    // Structured and legacy names agree; arrays are numbered.
    assert_eq!(
        get(&facts, "processors.count"),
        get(&facts, "processorcount")
    );
    assert_eq!(get(&facts, "processors.count"), get(&facts, "node.cpus"));
    assert!(facts.contains_key("processors.models.0"));
    let available: u64 = get(&facts, "memory.system.available_bytes")
        .parse()
        .unwrap();
    assert!(available > 0);
    assert_eq!(
        get(&facts, "kernelrelease"),
        command_output("uname", &["-r"])
    );
    assert_eq!(
        get(&facts, "kernelrelease"),
        get(&facts, "node.kernelversion")
    );
    // The built-ins are there beside Facter's.
    for name in [
        "system_overload_1min",
        "system_overload_5min",
        "system_overload_10min",
    ] {
        get(&facts, name).parse::<u64>().unwrap();
    }
    // `is_virtual` is Facter's to give: on some VMs its resolver fails (it reads
    // /proc/1/environ), and then the fact is absent, never made up.
    if let Some(v) = facts.get("is_virtual") {
        assert!(v == "true" || v == "false", "is_virtual = {v}");
    }
}

#[tokio::test]
async fn external_facts_of_every_kind() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    write(
        &d.join("plain.txt"),
        "# a comment\nZone = eu-west-1 \nrack=r1=a\nnoequals\nempty=\n",
    );
    write(
        &d.join("structured.json"),
        r#"{"JS": {"n": 1, "f": 1.5, "arr": [1, "two", {"x": true}], "nul": null, "e": []}, "gone": null}"#,
    );
    write(
        &d.join("structured.yaml"),
        "ya:\n  plain_yes: yes\n  quoted_yes: 'yes'\n  off: OFF\n  num: 0x1F\n  nothing: ~\n  list: [a, b]\n  date: 2024-01-02\n",
    );
    write(&d.join("also.yml"), "yml_fact: 1\n");
    script(&d.join("kv.sh"), "echo exec_kv=1\necho 'Exec_Two = 2'");
    script(
        &d.join("json-exec"),
        r#"echo '{"exec_json": {"a": [1, 2]}}'"#,
    );
    script(&d.join("yaml-exec"), "echo 'exec_yaml:'\necho '  b: c'");
    // Not read: hidden files, other extensions without an execute bit, directories,
    // and an executable `.txt` is read as text, not run.
    write(&d.join(".hidden.txt"), "hidden=1\n");
    write(&d.join("README"), "readme=1\n");
    std::fs::create_dir(d.join("sub.txt")).unwrap();
    script(&d.join("exec.txt"), "echo ran_txt=1");

    let mut gatherer = Gatherer::new(without_facter(&[d]));
    let facts = gatherer.refresh(None).await;

    assert_eq!(
        get(&facts, "zone"),
        "eu-west-1",
        "names lowercased, trimmed"
    );
    assert_eq!(get(&facts, "rack"), "r1=a", "the key runs to the first =");
    for absent in [
        "noequals", "empty", "gone", "js.nul", "hidden", "readme", "ran_txt",
    ] {
        assert!(!facts.contains_key(absent), "{absent} in {facts:?}");
    }
    // A text file's lines are the file's own: the executable .txt was read, not run.
    assert_eq!(get(&facts, "echo ran_txt"), "1");

    assert_eq!(get(&facts, "js.n"), "1");
    assert_eq!(get(&facts, "js.f"), "1.5");
    assert_eq!(get(&facts, "js.arr.0"), "1");
    assert_eq!(get(&facts, "js.arr.1"), "two");
    assert_eq!(get(&facts, "js.arr.2.x"), "true");
    assert_eq!(get(&facts, "js.e"), "[]");

    assert_eq!(get(&facts, "ya.plain_yes"), "true");
    assert_eq!(get(&facts, "ya.quoted_yes"), "yes");
    assert_eq!(get(&facts, "ya.off"), "false");
    assert_eq!(get(&facts, "ya.num"), "0x1F");
    assert!(!facts.contains_key("ya.nothing"));
    assert_eq!(get(&facts, "ya.list.1"), "b");
    assert_eq!(get(&facts, "ya.date"), "2024-01-02");
    assert_eq!(get(&facts, "yml_fact"), "1");

    assert_eq!(get(&facts, "exec_kv"), "1");
    assert_eq!(get(&facts, "exec_two"), "2");
    assert_eq!(get(&facts, "exec_json.a.1"), "2");
    assert_eq!(get(&facts, "exec_yaml.b"), "c");
}

#[tokio::test]
async fn precedence_builtin_facter_external() {
    let dir = TempDir::new().unwrap();
    let (first, second) = (dir.path().join("first"), dir.path().join("second"));
    std::fs::create_dir_all(&first).unwrap();
    std::fs::create_dir_all(&second).unwrap();
    let args = dir.path().join("facter-args");
    let facter = script(
        &dir.path().join("facter"),
        &format!(
            "echo \"$@\" > {}\ncat <<'EOF'\n{}\nEOF",
            args.display(),
            r#"{"architecture": "amd64", "os": {"name": "Debian", "family": "Debian"},
                "system_overload_1min": "999", "only_facter": true}"#
        ),
    );
    write(&first.join("a.txt"), "dup=first/a\narchitecture=external\n");
    write(&first.join("b.txt"), "dup=first/b\n");
    write(&second.join("z.txt"), "dup=second/z\nsecond_only=1\n");
    write(&second.join("os.json"), r#"{"os": {"x": 1}}"#);
    let options = FactsOptions {
        facter: Some(facter),
        external_facts: vec![first.clone(), second.clone()],
        ..FactsOptions::default()
    };
    let facts = Gatherer::new(options).refresh(None).await;

    assert_eq!(
        command_output("cat", &[args.to_str().unwrap()]),
        "--json --show-legacy --no-color"
    );
    assert_eq!(
        get(&facts, "system_overload_1min"),
        "999",
        "Facter over built-ins"
    );
    assert_eq!(get(&facts, "only_facter"), "true");
    assert_eq!(
        get(&facts, "architecture"),
        "external",
        "external over Facter"
    );
    assert_eq!(get(&facts, "os.x"), "1");
    assert!(
        !facts.contains_key("os.name"),
        "an external fact replaces Facter's whole"
    );
    assert_eq!(get(&facts, "second_only"), "1");
    // Facter's order: the first directory wins; in a directory, the last name.
    assert_eq!(get(&facts, "dup"), "first/b");

    // The same directories through the real Facter give the same winner.
    if require("facter", FACTER_HINT) {
        let real = Command::new("facter")
            .args(["--external-dir", first.to_str().unwrap()])
            .args(["--external-dir", second.to_str().unwrap()])
            .args(["dup", "architecture"])
            .output()
            .unwrap();
        let real = String::from_utf8(real.stdout).unwrap();
        assert!(real.contains("dup => first/b"), "{real}");
        assert!(real.contains("architecture => external"), "{real}");
    }
}

#[tokio::test]
async fn a_failing_source_keeps_its_last_good_values() {
    let dir = TempDir::new().unwrap();
    let d = dir.path().join("facts.d");
    std::fs::create_dir(&d).unwrap();
    let broken = dir.path().join("broken");
    let facter = script(
        &dir.path().join("facter"),
        &format!(
            "[ -e {0} ] && {{ echo 'facter broke' >&2; exit 1; }}\necho '{{\"from_facter\": \"yes\"}}'",
            broken.display()
        ),
    );
    write(&d.join("data.json"), r#"{"from_json": "good"}"#);
    script(
        &d.join("exec"),
        &format!(
            "[ -e {0} ] && exit 3\necho from_exec=good",
            broken.display()
        ),
    );
    write(&d.join("doomed.txt"), "doomed=1\n");
    let host = fake_host(dir.path(), "1.00 1.00 1.00 1/1 1\n", 2);
    let options = FactsOptions {
        facter: Some(facter),
        external_facts: vec![d.clone()],
        host: host.clone(),
        ..FactsOptions::default()
    };
    let mut gatherer = Gatherer::new(options);
    let before = gatherer.refresh(None).await;
    assert_eq!(get(&before, "from_facter"), "yes");
    assert_eq!(get(&before, "from_json"), "good");
    assert_eq!(get(&before, "from_exec"), "good");
    assert_eq!(get(&before, "doomed"), "1");
    assert_eq!(get(&before, "system_overload_1min"), "50");

    // Every source breaks: Facter and the executable fail, the JSON turns to garbage,
    // /proc/loadavg to nonsense; a file that is removed takes its facts with it.
    write(&broken, "");
    write(&d.join("data.json"), "{not json");
    write(&host.proc.join("loadavg"), "nonsense\n");
    std::fs::remove_file(d.join("doomed.txt")).unwrap();
    for _ in 0..2 {
        let after = gatherer.refresh(None).await;
        assert_eq!(get(&after, "from_facter"), "yes");
        assert_eq!(get(&after, "from_json"), "good");
        assert_eq!(get(&after, "from_exec"), "good");
        assert_eq!(get(&after, "system_overload_1min"), "50");
        assert!(!after.contains_key("doomed"));
    }

    // Fixed again: new values are read.
    std::fs::remove_file(&broken).unwrap();
    write(&d.join("data.json"), r#"{"from_json": "better"}"#);
    write(&host.proc.join("loadavg"), "3.00 1.00 1.00 1/1 1\n");
    let fixed = gatherer.refresh(None).await;
    assert_eq!(get(&fixed, "from_json"), "better");
    assert_eq!(get(&fixed, "system_overload_1min"), "150");
}

#[tokio::test]
async fn facts_never_obtained_are_absent() {
    let dir = TempDir::new().unwrap();
    let options = FactsOptions {
        facter: Some(dir.path().join("no-such-facter")),
        external_facts: vec![dir.path().join("no-such-dir")],
        host: HostPaths {
            proc: dir.path().join("no-proc"),
            os_release: dir.path().join("no-os-release"),
        },
        ..FactsOptions::default()
    };
    let facts = Gatherer::new(options).refresh(None).await;
    assert!(facts.is_empty(), "{facts:?}");
}

#[tokio::test]
async fn a_hanging_executable_is_killed_after_its_timeout() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    // Not in the facts directory's listing: a hidden file.
    let pid_path = d.join(".pid");
    script(
        &d.join("hangs"),
        &format!(
            "echo half=1\necho $$ > {}\nexec sleep 600",
            pid_path.display()
        ),
    );
    write(&d.join("fine.txt"), "fine=1\n");
    let options = FactsOptions {
        executable_timeout: Duration::from_millis(500),
        ..without_facter(&[d])
    };
    let mut gatherer = Gatherer::new(options);
    let started = Instant::now();
    let facts = gatherer.refresh(None).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "refresh took {took:?}");
    assert!(took >= Duration::from_millis(500), "refresh took {took:?}");
    assert_eq!(get(&facts, "fine"), "1");
    assert!(
        !facts.contains_key("half"),
        "a killed executable's output is not used"
    );
    let pid = std::fs::read_to_string(&pid_path).unwrap();
    let proc_entry = PathBuf::from(format!("/proc/{}", pid.trim()));
    assert!(
        !proc_entry.exists(),
        "the executable (pid {pid}) is still there"
    );
}

#[tokio::test]
async fn a_hanging_facter_is_killed_after_its_timeout() {
    let dir = TempDir::new().unwrap();
    let facter = script(&dir.path().join("facter"), "exec sleep 600");
    let options = FactsOptions {
        facter: Some(facter),
        facter_timeout: Duration::from_millis(300),
        host: fake_host(dir.path(), "0.10 0.20 0.30 1/1 1\n", 1),
        ..FactsOptions::default()
    };
    let started = Instant::now();
    let facts = Gatherer::new(options).refresh(None).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        get(&facts, "system_overload_1min"),
        "10",
        "built-ins all the same"
    );
}

#[tokio::test]
async fn garbage_from_an_executable_is_skipped() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    script(&d.join("garbage"), "echo good=1\necho 'this is not a fact'");
    script(&d.join("binary"), "printf 'k=\\377\\376\\n'");
    script(&d.join("endless"), "exec yes");
    script(&d.join("fine"), "echo fine=1");
    let started = Instant::now();
    let facts = Gatherer::new(without_facter(&[d])).refresh(None).await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "endless output is cut off before the timeout"
    );
    assert_eq!(get(&facts, "fine"), "1");
    for absent in ["good", "k", "y"] {
        assert!(!facts.contains_key(absent), "{absent} in {facts:?}");
    }
}

#[test]
fn overload_is_load_per_cpu_in_percent() {
    assert_eq!(overload(2.45, 2).as_deref(), Some("123"));
    assert_eq!(overload(0.0, 4).as_deref(), Some("0"));
    assert_eq!(
        overload(0.125, 1).as_deref(),
        Some("13"),
        "halves away from zero"
    );
    assert_eq!(overload(16.0, 8).as_deref(), Some("200"));
    assert_eq!(overload(1.0, 0), None);
    assert_eq!(overload(f64::NAN, 2), None);
}

#[test]
fn the_ten_minute_window_from_injected_samples() {
    let t0 = Instant::now();
    let minute = Duration::from_secs(60);
    let at = |minutes: u32| t0 + minute * minutes;
    let mut window = LoadWindow::new(OVERLOAD_WINDOW);
    assert_eq!(window.average(), None);
    // One sample a minute: not a whole window until the tenth minute.
    for m in 0..10 {
        window.record(at(m), 1.0);
        assert_eq!(window.average(), None, "minute {m}");
    }
    window.record(at(10), 12.0);
    // Samples of minutes 1..=10: nine 1.0s and a 12.0.
    assert_eq!(window.len(), 10);
    assert_eq!(window.average(), Some(2.1));
    // Minutes later the old samples are gone.
    for m in 11..=20 {
        window.record(at(m), 4.0);
    }
    assert_eq!(window.len(), 10);
    assert_eq!(window.average(), Some(4.0));
    // A sample older than the newest is ignored; a gap longer than the window leaves the
    // newest sample alone.
    window.record(at(5), 100.0);
    assert_eq!(window.average(), Some(4.0));
    window.record(at(45), 0.5);
    assert_eq!(window.len(), 1);
    assert_eq!(window.average(), Some(0.5));
}

#[tokio::test]
async fn builtins_from_a_fake_proc_and_docker_info() {
    let dir = TempDir::new().unwrap();
    let host = fake_host(dir.path(), "3.00 1.00 0.50 2/100 42\n", 4);
    let options = FactsOptions {
        facter: None,
        host,
        ..FactsOptions::default()
    };
    let mut gatherer = Gatherer::new(options);
    let facts = gatherer.refresh(None).await;
    let want: Facts = [
        ("system_overload_1min", "75"),
        ("system_overload_5min", "25"),
        // Before ten minutes of samples: the kernel's 5-minute average.
        ("system_overload_10min", "25"),
        ("node.cpus", "4"),
        ("node.memory_available_bytes", "8192000000"),
        ("node.name", "fakehost"),
        ("node.kernelversion", "6.1.0-fake"),
        ("node.operatingsystem", "Fake GNU/Linux 1 (\"quoted\")"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(facts, want);

    let docker = DockerInfo {
        name: Some("dockerhost".into()),
        kernel_version: Some("6.1.0-docker".into()),
        operating_system: Some("Debian GNU/Linux 12 (bookworm)".into()),
        storage_driver: Some("overlay2".into()),
        labels: [("zone", "b"), ("com.example.rack", "r7")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    };
    let with_docker = gatherer.refresh(Some(&docker)).await;
    assert_eq!(get(&with_docker, "node.name"), "dockerhost");
    assert_eq!(get(&with_docker, "node.kernelversion"), "6.1.0-docker");
    assert_eq!(
        get(&with_docker, "node.operatingsystem"),
        "Debian GNU/Linux 12 (bookworm)"
    );
    assert_eq!(get(&with_docker, "engine.storagedriver"), "overlay2");
    assert_eq!(get(&with_docker, "engine.labels.zone"), "b");
    assert_eq!(get(&with_docker, "engine.labels.com.example.rack"), "r7");
    // No Docker info this time: the last one is kept.
    assert_eq!(gatherer.refresh(None).await, with_docker);
    assert_eq!(gatherer.facts(), &with_docker);
}

#[test]
fn docker_info_from_bollard() {
    let info = bollard::models::SystemInfo {
        name: Some("n1".into()),
        driver: Some("btrfs".into()),
        kernel_version: Some(String::new()),
        labels: Some(vec![
            "zone=b".into(),
            "a=b=c".into(),
            "flag".into(),
            "=x".into(),
        ]),
        ..Default::default()
    };
    let docker = DockerInfo::from_system_info(&info);
    assert_eq!(docker.name.as_deref(), Some("n1"));
    assert_eq!(docker.storage_driver.as_deref(), Some("btrfs"));
    assert_eq!(docker.kernel_version, None, "empty is absent");
    assert_eq!(docker.operating_system, None);
    let labels: Vec<(&str, &str)> = docker
        .labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(labels, [("a", "b=c"), ("flag", ""), ("zone", "b")]);
}

#[tokio::test]
async fn builtins_from_the_real_proc() {
    let facts = Gatherer::new(without_facter(&[])).refresh(None).await;
    assert_eq!(
        get(&facts, "node.cpus"),
        command_output("getconf", &["_NPROCESSORS_ONLN"])
    );
    assert_eq!(
        get(&facts, "node.kernelversion"),
        command_output("uname", &["-r"])
    );
    assert_eq!(get(&facts, "node.name"), command_output("uname", &["-n"]));
    assert_eq!(
        get(&facts, "node.operatingsystem"),
        command_output("sh", &["-c", ". /etc/os-release && echo \"$PRETTY_NAME\""])
    );
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    let ours: u64 = get(&facts, "node.memory_available_bytes").parse().unwrap();
    let theirs = kib * 1024;
    assert!(
        ours.abs_diff(theirs) < theirs / 4,
        "MemAvailable {theirs} vs the fact's {ours}"
    );
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap();
    let load1: f64 = loadavg.split_whitespace().next().unwrap().parse().unwrap();
    let cpus: u32 = get(&facts, "node.cpus").parse().unwrap();
    let one: u64 = get(&facts, "system_overload_1min").parse().unwrap();
    let expected = (load1 / f64::from(cpus) * 100.0).round();
    assert!(
        (one as f64 - expected).abs() <= 25.0,
        "overload {one} vs {expected} from {loadavg}"
    );
    for name in ["system_overload_5min", "system_overload_10min"] {
        get(&facts, name).parse::<u64>().unwrap();
    }
}

#[tokio::test]
async fn the_real_docker_daemon_storage_driver_and_labels() {
    let socket = "/var/run/docker.sock";
    let connected = match bollard::Docker::connect_with_unix(socket, 30, &DOCKER_API_VERSION) {
        Ok(docker) => docker.ping().await.map(|_| docker),
        Err(e) => Err(e),
    };
    let docker = match connected {
        Ok(docker) => docker,
        Err(e) => {
            let problem = format!("no Docker daemon at {socket}: {e}");
            if in_ci() {
                panic!("{problem} (CI=true: run scripts/ensure-docker first)");
            }
            eprintln!("SKIPPED: {problem}; run scripts/ensure-docker (as root)");
            return;
        }
    };
    let mut gatherer = Gatherer::new(without_facter(&[]));
    let facts = gatherer.refresh_with_docker(Some(&docker)).await;
    let cli = |format: &str| {
        command_output(
            "docker",
            &[
                "-H",
                "unix:///var/run/docker.sock",
                "info",
                "--format",
                format,
            ],
        )
    };
    assert_eq!(get(&facts, "engine.storagedriver"), cli("{{.Driver}}"));
    assert_eq!(get(&facts, "node.name"), cli("{{.Name}}"));
    assert_eq!(get(&facts, "node.kernelversion"), cli("{{.KernelVersion}}"));
    assert_eq!(
        get(&facts, "node.operatingsystem"),
        cli("{{.OperatingSystem}}")
    );
    let labels: Vec<String> = serde_json::from_str(&cli("{{json .Labels}}")).unwrap();
    let mut ours: Vec<String> = facts
        .iter()
        .filter_map(|(k, v)| Some(format!("{}={v}", k.strip_prefix("engine.labels.")?)))
        .collect();
    let mut labels_sorted = labels.clone();
    labels_sorted.sort();
    ours.sort();
    assert_eq!(ours, labels_sorted, "engine labels");
}

#[tokio::test]
async fn docker_that_is_not_there_gives_no_engine_facts() {
    let dir = TempDir::new().unwrap();
    // A socket nobody listens on any more: connections are refused.
    let socket = dir.path().join("no-docker.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let docker =
        bollard::Docker::connect_with_unix(socket.to_str().unwrap(), 5, &DOCKER_API_VERSION)
            .unwrap();
    let started = Instant::now();
    let facts = Gatherer::new(without_facter(&[]))
        .refresh_with_docker(Some(&docker))
        .await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!facts.keys().any(|k| k.starts_with("engine.")), "{facts:?}");
    assert!(facts.contains_key("node.cpus"));
}
