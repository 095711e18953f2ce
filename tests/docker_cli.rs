//! The proxy is invisible: every docker CLI command behaves the same (output and exit code)
//! direct to the real daemon, through the proxy with an empty configuration, and through
//! the proxy with a null HTTP adapter hooked twice pre and twice post on `* *`.
//!
//! Needs the real daemon (`scripts/ensure-docker`); under `CI=true` its absence fails.

#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;

use powerstrip_testkit::FakeAdapter;
use support::{IMAGE, ProxyProcess, Run, direct, docker, require_docker, run_command};

/// The three ways of reaching Docker that must be indistinguishable.
struct Modes {
    empty: ProxyProcess,
    hooked: ProxyProcess,
    null: FakeAdapter,
}

impl Modes {
    async fn start() -> Option<Modes> {
        if !require_docker() {
            return None;
        }
        let null = FakeAdapter::echo().await;
        let config = format!(
            "version = 1\n[adapters]\nnull = {:?}\n\n[[endpoints]]\nmatch = \"* *\"\npre = [\"null\", \"null\"]\npost = [\"null\", \"null\"]\n",
            null.url()
        );
        Some(Modes {
            empty: ProxyProcess::start(Some("version = 1\n")),
            hooked: ProxyProcess::start(Some(&config)),
            null,
        })
    }

    fn hosts(&self) -> [(&'static str, String); 3] {
        [
            ("direct", direct()),
            ("proxy, empty config", self.empty.host()),
            ("proxy, null adapters", self.hooked.host()),
        ]
    }

    /// Proves the hooked proxy really ran its hooks during the test.
    fn assert_hooks_ran(&self) {
        assert!(
            self.null.call_count() > 0,
            "the null adapter was never called"
        );
    }
}

/// Asserts every mode produced what the direct run produced.
fn assert_same(what: &str, runs: &[(&str, Run)]) {
    let (_, reference) = &runs[0];
    for (mode, run) in &runs[1..] {
        assert_eq!(
            run,
            reference,
            "{what}: {mode} differs from direct\n--- direct stdout ---\n{}\n--- direct stderr ---\n{}\n--- {mode} stdout ---\n{}\n--- {mode} stderr ---\n{}",
            reference.out(),
            reference.stderr,
            run.out(),
            run.stderr
        );
    }
}

/// Runs the same docker command in every mode and asserts the results are equal.
async fn same_everywhere(modes: &Modes, args: &[&str], stdin: Option<&[u8]>) -> Run {
    let mut runs = Vec::new();
    for (mode, host) in modes.hosts() {
        runs.push((mode, docker(&host, args, stdin).await));
    }
    assert_same(&args.join(" "), &runs);
    runs.swap_remove(0).1
}

/// Containers a test made, removed (directly) when it ends, pass or fail.
#[derive(Default)]
struct Cleanup(Vec<String>);

impl Cleanup {
    /// Starts a container directly (not through any proxy) and remembers it.
    async fn run_detached(&mut self, args: &[&str]) -> String {
        let mut all = vec!["run", "-d"];
        all.extend_from_slice(args);
        let run = docker(&direct(), &all, None).await;
        assert_eq!(run.code, 0, "docker run -d failed: {}", run.stderr);
        let id = run.out().trim().to_owned();
        self.0.push(id.clone());
        id
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            let _ = Command::new("docker")
                .args(["-H", &direct(), "rm", "-f"])
                .args(&self.0)
                .output();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_info_ps_images() {
    let Some(m) = Modes::start().await else {
        return;
    };
    same_everywhere(&m, &["version"], None).await;
    // Counts of containers and images change while other tests run; everything else in
    // `docker info` must be identical.
    let mut runs = Vec::new();
    for (mode, host) in m.hosts() {
        let mut run = docker(&host, &["info"], None).await;
        let stable: Vec<String> = run
            .out()
            .lines()
            .filter(|l| {
                let key = l.trim_start().split(':').next().unwrap_or_default();
                !["Containers", "Running", "Paused", "Stopped", "Images"].contains(&key)
            })
            // dockerd lists its runtimes from a Go map, in a different order each call.
            .map(|l| match l.strip_prefix(" Runtimes:") {
                Some(list) => {
                    let mut names: Vec<&str> = list.split_whitespace().collect();
                    names.sort_unstable();
                    format!(" Runtimes: {}", names.join(" "))
                }
                None => l.to_owned(),
            })
            .collect();
        run.stdout = stable.join("\n").into_bytes();
        runs.push((mode, run));
    }
    assert_same("docker info", &runs);

    let mut cleanup = Cleanup::default();
    let id = cleanup
        .run_detached(&[
            "--label",
            "powerstrip-e2e=ps",
            "--name",
            &format!("ps-{}", std::process::id()),
            IMAGE,
            "sleep",
            "60",
        ])
        .await;
    let ps = same_everywhere(
        &m,
        &[
            "ps",
            "-a",
            "--no-trunc",
            "--filter",
            &format!("id={id}"),
            "--format",
            "{{.ID}} {{.Image}} {{.Command}} {{.Names}} {{.State}} {{.Labels}}",
        ],
        None,
    )
    .await;
    assert!(ps.out().contains(&id), "{}", ps.out());
    let images = same_everywhere(
        &m,
        &[
            "images",
            "--no-trunc",
            IMAGE,
            "--format",
            "{{.Repository}}:{{.Tag}} {{.ID}} {{.Size}}",
        ],
        None,
    )
    .await;
    assert!(images.out().starts_with(IMAGE), "{}", images.out());
    m.assert_hooks_ran();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_output_and_exit_codes() {
    let Some(m) = Modes::start().await else {
        return;
    };
    let hello = same_everywhere(&m, &["run", "--rm", IMAGE, "echo", "hello"], None).await;
    assert_eq!(hello.out(), "hello\n");
    let failing = same_everywhere(
        &m,
        &[
            "run",
            "--rm",
            IMAGE,
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
        None,
    )
    .await;
    assert_eq!(failing.code, 3);
    assert_eq!(failing.out(), "out\n");
    assert_eq!(failing.stderr, "err\n");
    m.assert_hooks_ran();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_interactive_with_stdin() {
    let Some(m) = Modes::start().await else {
        return;
    };
    let input: Vec<u8> = (0..2000)
        .map(|i| format!("line {i}\n"))
        .collect::<String>()
        .into_bytes();
    let cat = same_everywhere(&m, &["run", "--rm", "-i", IMAGE, "cat"], Some(&input)).await;
    assert_eq!(
        cat.stdout, input,
        "stdin reaches the container and its EOF ends cat"
    );
    let counted = same_everywhere(
        &m,
        &["run", "--rm", "-i", IMAGE, "wc", "-l"],
        Some(b"hi\nthere\n"),
    )
    .await;
    assert_eq!(counted.out().trim(), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_a_tty() {
    let Some(m) = Modes::start().await else {
        return;
    };
    let mut runs = Vec::new();
    for (mode, host) in m.hosts() {
        // `script` gives docker a pty, so `-t` is honoured as in a terminal.
        let command = format!("docker run --rm -t {IMAGE} sh -c 'tty; echo interactive; exit 4'");
        runs.push((
            mode,
            run_command("script", &["-qec", &command, "/dev/null"], &host, None).await,
        ));
    }
    assert_same("docker run -t", &runs);
    let out = runs[0].1.out();
    assert!(
        out.contains("/dev/pts/0") && out.contains("interactive"),
        "{out}"
    );
    assert_eq!(runs[0].1.code, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_and_exec_interactive() {
    let Some(m) = Modes::start().await else {
        return;
    };
    let mut cleanup = Cleanup::default();
    let id = cleanup.run_detached(&[IMAGE, "sleep", "120"]).await;
    let out = same_everywhere(&m, &["exec", &id, "sh", "-c", "echo in-exec; exit 5"], None).await;
    assert_eq!((out.code, out.out().as_str()), (5, "in-exec\n"));
    let piped = same_everywhere(&m, &["exec", "-i", &id, "cat"], Some(b"through exec -i\n")).await;
    assert_eq!(piped.out(), "through exec -i\n");
    m.assert_hooks_ran();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_to_a_running_container() {
    let Some(m) = Modes::start().await else {
        return;
    };
    let mut cleanup = Cleanup::default();
    let mut runs = Vec::new();
    for (mode, host) in m.hosts() {
        // Each mode attaches to its own container, which waits for a line on stdin. Stdin
        // stays open a while after the line: dockerd closes an attached stdout as soon as
        // the attached stdin ends, so an immediate EOF would race the container's answer
        // (directly as much as through the proxy).
        let id = cleanup
            .run_detached(&[
                "-i",
                IMAGE,
                "sh",
                "-c",
                "read line; echo got: $line; exit 7",
            ])
            .await;
        let pipeline = format!("(echo hello attach; sleep 3) | docker attach {id}");
        let run = run_command("sh", &["-c", &pipeline], &host, None).await;
        runs.push((mode, run));
    }
    assert_same("docker attach", &runs);
    assert_eq!(runs[0].1.out(), "got: hello attach\n");
    assert_eq!(runs[0].1.code, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_of_ten_thousand_lines_and_follow() {
    let Some(m) = Modes::start().await else {
        return;
    };
    let mut cleanup = Cleanup::default();
    let id = cleanup
        .run_detached(&[IMAGE, "sh", "-c", "seq 1 10000; seq 1 3 >&2"])
        .await;
    docker(&direct(), &["wait", &id], None).await;
    let logs = same_everywhere(&m, &["logs", &id], None).await;
    assert_eq!(logs.out().lines().count(), 10_000);
    assert_eq!(logs.out().lines().last(), Some("10000"));
    assert_eq!(logs.stderr, "1\n2\n3\n");

    // `logs -f` follows until the container exits.
    let mut runs = Vec::new();
    for (mode, host) in m.hosts() {
        let id = cleanup
            .run_detached(&[
                IMAGE,
                "sh",
                "-c",
                "for i in 1 2 3 4 5; do echo tick $i; sleep 0.2; done",
            ])
            .await;
        let started = std::time::Instant::now();
        let run = docker(&host, &["logs", "-f", &id], None).await;
        assert!(
            started.elapsed().as_millis() >= 500,
            "{mode}: logs -f returned before the container exited"
        );
        runs.push((mode, run));
    }
    assert_same("docker logs -f", &runs);
    assert_eq!(runs[0].1.out(), "tick 1\ntick 2\ntick 3\ntick 4\ntick 5\n");
    m.assert_hooks_ran();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_since_until() {
    let Some(m) = Modes::start().await else {
        return;
    };
    let since = docker(
        &direct(),
        &["version", "--format", "{{.Server.Version}}"],
        None,
    )
    .await;
    assert_eq!(since.code, 0);
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 1;
    let mut cleanup = Cleanup::default();
    let id = cleanup.run_detached(&[IMAGE, "true"]).await;
    docker(&direct(), &["wait", &id], None).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let end = start + 3;
    let events = same_everywhere(
        &m,
        &[
            "events",
            "--since",
            &start.to_string(),
            "--until",
            &end.to_string(),
            "--filter",
            &format!("container={id}"),
        ],
        None,
    )
    .await;
    for action in ["create", "start", "die"] {
        assert!(
            events.out().contains(&format!("container {action} {id}")),
            "{}",
            events.out()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_a_small_context() {
    let Some(m) = Modes::start().await else {
        return;
    };
    let context = tempfile::tempdir().unwrap();
    std::fs::write(
        context.path().join("Dockerfile"),
        format!("FROM {IMAGE}\nCOPY greeting /greeting\nRUN cat /greeting\nCMD [\"cat\", \"/greeting\"]\n"),
    )
    .unwrap();
    std::fs::write(
        context.path().join("greeting"),
        format!("built {}\n", std::process::id()),
    )
    .unwrap();
    let tag = format!("powerstrip-e2e-build:{}", std::process::id());
    let dir = context.path().to_str().unwrap();
    // The first build fills the cache, so every mode then sees the same steps and ids.
    let first = docker(&direct(), &["build", "-t", &tag, dir], None).await;
    assert_eq!(first.code, 0, "{}", first.stderr);
    let built = same_everywhere(&m, &["build", "-t", &tag, dir], None).await;
    assert!(
        built.out().contains("Successfully tagged"),
        "{}",
        built.out()
    );
    let run = same_everywhere(&m, &["run", "--rm", &tag], None).await;
    assert_eq!(run.out(), format!("built {}\n", std::process::id()));
    docker(&direct(), &["rmi", &tag], None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_a_200_mb_context_without_buffering_it() {
    let Some(m) = Modes::start().await else {
        return;
    };
    let context = tempfile::tempdir().unwrap();
    std::fs::write(
        context.path().join("Dockerfile"),
        format!("FROM {IMAGE}\nCMD true\n"),
    )
    .unwrap();
    // Incompressible bytes, so nothing along the way can shrink them.
    let mut data = vec![0u8; 200 << 20];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(context.path().join("blob"), &data).unwrap();
    drop(data);
    let dir = context.path().to_str().unwrap();
    let tag = format!("powerstrip-e2e-big:{}", std::process::id());
    for proxy in [&m.empty, &m.hooked] {
        let before = proxy.memory_kib("VmHWM");
        let run = docker(&proxy.host(), &["build", "-q", "-t", &tag, dir], None).await;
        assert_eq!(run.code, 0, "{}", run.stderr);
        let after = proxy.memory_kib("VmHWM");
        eprintln!("200 MB build context: proxy peak RSS {before} KiB before, {after} KiB after");
        assert!(
            after < before + 8 * 1024,
            "uploading 200 MB grew the proxy's peak RSS from {before} KiB to {after} KiB"
        );
    }
    docker(&direct(), &["rmi", &tag], None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cp_in_and_out_20_mb() {
    let Some(m) = Modes::start().await else {
        return;
    };
    let mut cleanup = Cleanup::default();
    let id = cleanup.run_detached(&[IMAGE, "sleep", "120"]).await;
    let scratch = tempfile::tempdir().unwrap();
    let source = scratch.path().join("payload");
    let data: Vec<u8> = (0..20u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&source, &data).unwrap();
    for (mode, host) in m.hosts() {
        let inside = format!("{id}:/payload-{}", mode.replace([' ', ','], "-"));
        let copy_in = docker(&host, &["cp", source.to_str().unwrap(), &inside], None).await;
        assert_eq!(copy_in.code, 0, "{mode}: {}", copy_in.stderr);
        let out = scratch.path().join(format!("out-{}", mode.len()));
        let copy_out = docker(&host, &["cp", &inside, out.to_str().unwrap()], None).await;
        assert_eq!(copy_out.code, 0, "{mode}: {}", copy_out.stderr);
        assert!(
            std::fs::read(&out).unwrap() == data,
            "{mode}: the copy differs from the original"
        );
        std::fs::remove_file(out).unwrap();
    }
    let sums = same_everywhere(
        &m,
        &[
            "exec",
            &id,
            "sh",
            "-c",
            "sha256sum /payload-* | cut -d' ' -f1 | uniq | wc -l",
        ],
        None,
    )
    .await;
    assert_eq!(
        sums.out().trim(),
        "1",
        "every copy inside the container is identical"
    );
    m.assert_hooks_ran();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_load_and_export() {
    let Some(m) = Modes::start().await else {
        return;
    };
    let mut cleanup = Cleanup::default();
    let id = cleanup
        .run_detached(&[IMAGE, "sh", "-c", "echo data > /exported; sleep 120"])
        .await;
    let mut saves = Vec::new();
    for (mode, host) in m.hosts() {
        let pipeline =
            format!("docker save {IMAGE} | sha256sum; docker save {IMAGE} | docker load");
        saves.push((
            mode,
            run_command("sh", &["-c", &pipeline], &host, None).await,
        ));
    }
    assert_same("docker save | docker load", &saves);
    assert!(
        saves[0].1.out().contains(&format!("Loaded image: {IMAGE}")),
        "{}",
        saves[0].1.out()
    );

    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut exports = Vec::new();
    for (mode, host) in m.hosts() {
        let pipeline = format!("docker export {id} | tar -xO exported");
        exports.push((
            mode,
            run_command("sh", &["-c", &pipeline], &host, None).await,
        ));
    }
    assert_same("docker export", &exports);
    assert_eq!(exports[0].1.out(), "data\n");
    let sizes = same_everywhere(
        &m,
        &[
            "inspect",
            "--format",
            "{{.Config.Image}} {{.State.Status}} {{.Path}}",
            &id,
        ],
        None,
    )
    .await;
    assert_eq!(sizes.out(), format!("{IMAGE} running sh\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_kill_rm() {
    let Some(m) = Modes::start().await else {
        return;
    };
    let mut cleanup = Cleanup::default();
    let mut runs = Vec::new();
    for (mode, host) in m.hosts() {
        let a = cleanup.run_detached(&[IMAGE, "sleep", "120"]).await;
        let b = cleanup.run_detached(&[IMAGE, "sleep", "120"]).await;
        let stop = docker(&host, &["stop", "-t", "1", &a], None).await;
        let kill = docker(&host, &["kill", &b], None).await;
        let rm = docker(&host, &["rm", &a, &b], None).await;
        let gone = docker(&host, &["inspect", &a], None).await;
        // Identical except for the ids, which differ per mode.
        let text = [stop, kill, rm, gone]
            .iter()
            .map(|r| format!("{} {} {}", r.code, r.out(), r.stderr))
            .collect::<String>()
            .replace(&a, "<a>")
            .replace(&b, "<b>");
        runs.push((
            mode,
            Run {
                code: 0,
                stdout: text.into_bytes(),
                stderr: String::new(),
            },
        ));
    }
    assert_same("stop, kill, rm", &runs);
    assert_eq!(
        runs[0].1.out(),
        "0 <a>\n 0 <b>\n 0 <a>\n<b>\n 1 []\n Error: No such object: <a>\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_error_reaches_the_user() {
    let Some(m) = Modes::start().await else {
        return;
    };
    // --pull=never: the daemon answers from its own store and never contacts a registry.
    let run = same_everywhere(
        &m,
        &["run", "--rm", "--pull=never", "no-such-image:x"],
        None,
    )
    .await;
    assert_eq!(run.code, 125);
    assert!(
        run.stderr
            .contains("Error response from daemon: No such image: no-such-image:x"),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_runs_through_the_hooked_proxy() {
    let Some(m) = Modes::start().await else {
        return;
    };
    let host = m.hooked.host();
    let runs = futures_util::future::join_all((0..20).map(|i| {
        let host = host.clone();
        async move {
            let n = i.to_string();
            docker(&host, &["run", "--rm", IMAGE, "echo", &n], None).await
        }
    }))
    .await;
    for (i, run) in runs.iter().enumerate() {
        assert_eq!(
            (run.code, run.out()),
            (0, format!("{i}\n")),
            "run {i}: {}",
            run.stderr
        );
    }
    m.assert_hooks_ran();
}
