//! The adapter platform as adapters and operators meet it: the context's Docker client on
//! the real daemon (never through the proxy), the store refusing cleanly when it cannot
//! answer, nodes registering under leases in a real etcd and vanishing when they die, and
//! `powerstrip nodes` / `powerstrip state` reading what is kept.
//!
//! Needs the real daemon (`scripts/ensure-docker`) and etcd (`scripts/ensure-tools test`);
//! under `CI=true` their absence fails.

#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use powerstrip_adapter::builtin::Builtin;
use powerstrip_adapter::{Adapter, ClientRequest, Context, HookError, ServerResponse, async_trait};
use powerstrip_store::{Etcd, EtcdOptions, Store};
use powerstrip_testenv::etcd::EtcdCluster;
use powerstrip_testkit::{FakeAdapter, TestProxy};
use support::{DOCKER_SOCKET, IMAGE, ProxyProcess, direct, docker, require_docker};

/// Records each started container's PID in the store, found with the context's Docker
/// client — as the networking adapter finds the netns to plumb.
struct PidRecorder {
    ctx: Context,
}

#[async_trait]
impl Adapter for PidRecorder {
    async fn post_hook(
        &self,
        request: &ClientRequest,
        response: ServerResponse,
    ) -> Result<ServerResponse, HookError> {
        use powerstrip_adapter::path::RequestExt as _;
        let Some(id) = request.docker_path().container_id() else {
            return Ok(response);
        };
        let inspect = self
            .ctx
            .docker()?
            .inspect_container(&id, None)
            .await
            .map_err(|e| HookError::failed(format!("inspect {id}: {e}")))?;
        let pid = inspect.state.and_then(|s| s.pid).unwrap_or_default();
        self.ctx
            .store()
            .put(&format!("pids/{id}"), pid.to_string().as_bytes(), None)
            .await?;
        Ok(response)
    }
}

fn pid_recorder() -> Builtin {
    Builtin::new("pid-recorder", "records container PIDs", |_, ctx| {
        Ok(Arc::new(PidRecorder { ctx: ctx.clone() }))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_context_docker_client_calls_the_real_daemon_not_the_proxy() {
    if !require_docker() {
        return;
    }
    let watcher = FakeAdapter::echo().await;
    let config = format!(
        "version = 1\n[adapters]\npids = {{ builtin = \"pid-recorder\" }}\nwatcher = {:?}\n\
         [[endpoints]]\nmatch = \"POST /*/containers/*/start\"\npost = [\"pids\"]\n\
         [[endpoints]]\nmatch = \"GET /*/containers/*/json\"\npre = [\"watcher\"]\n",
        watcher.url()
    );
    let proxy = TestProxy::builder(&direct())
        .builtin(pid_recorder())
        .toml(&config)
        .start()
        .await;
    let created = docker(&direct(), &["create", IMAGE, "sleep", "60"], None).await;
    assert_eq!(created.code, 0, "{created:?}");
    let id = created.out().trim().to_owned();
    let _cleanup = scopeguard(id.clone());
    let started = proxy
        .client()
        .request(http::Method::POST, &format!("/v1.41/containers/{id}/start"))
        .await;
    assert_eq!(started.status, StatusCode::NO_CONTENT, "{}", started.text());
    let recorded = proxy
        .context()
        .store()
        .get(&format!("pids/{id}"))
        .await
        .unwrap()
        .expect("the adapter recorded the PID");
    let actual = docker(&direct(), &["inspect", "-f", "{{.State.Pid}}", &id], None).await;
    assert_eq!(
        String::from_utf8_lossy(&recorded.value),
        actual.out().trim()
    );
    assert_ne!(actual.out().trim(), "0");
    // The adapter's inspect went to the daemon itself: no hook saw it.
    assert_eq!(
        watcher.call_count(),
        0,
        "the context's client went through the proxy"
    );
    assert_eq!(proxy.context().docker_address().to_string(), direct());
}

/// Removes a container when dropped.
fn scopeguard(id: String) -> impl Drop {
    struct Remove(String);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = Command::new("docker")
                .args([
                    "-H",
                    &format!("unix://{DOCKER_SOCKET}"),
                    "rm",
                    "-f",
                    &self.0,
                ])
                .output();
        }
    }
    Remove(id)
}

/// Writes to the store on every create.
struct Claimer {
    ctx: Context,
}

#[async_trait]
impl Adapter for Claimer {
    async fn pre_hook(&self, request: ClientRequest) -> Result<ClientRequest, HookError> {
        self.ctx.store().put("claims/x", b"1", None).await?;
        Ok(request)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_answer_is_a_prompt_503_naming_it() {
    if !powerstrip_testenv::require("etcd", powerstrip_testenv::etcd::INSTALL_HINT) {
        return;
    }
    // An etcd that was there when the proxy started, and is gone when the call comes.
    let mut etcd = EtcdCluster::start(1);
    let mut options = EtcdOptions::new(etcd.endpoints());
    options.timeout = Duration::from_millis(700);
    let store: Arc<dyn Store> = Arc::new(Etcd::connect(&options).await.unwrap());
    store.put("claims/warm", b"1", None).await.unwrap();
    let endpoint = etcd.endpoint(0);
    etcd.kill(0);
    let docker = powerstrip_testkit::FakeDocker::builder()
        .route(
            "POST",
            "/*/containers/create",
            powerstrip_testkit::Responder::json(201, serde_json::json!({"Id": "x"})),
        )
        .start_unix()
        .await;
    let claimer = Builtin::new("claimer", "claims", |_, ctx| {
        Ok(Arc::new(Claimer { ctx: ctx.clone() }))
    });
    let proxy = TestProxy::builder(&docker.address())
        .builtin(claimer)
        .store(store)
        .toml("version = 1\n[adapters]\nclaim = { builtin = \"claimer\" }\n[[endpoints]]\nmatch = \"POST /*/containers/create\"\npre = [\"claim\"]\n")
        .start()
        .await;
    let started = Instant::now();
    let r = proxy
        .client()
        .post_json(
            "/v1.41/containers/create",
            &serde_json::json!({"Image": "busybox"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let message = r.message();
    assert!(
        message.contains(&format!("the cluster store (etcd {endpoint}"))
            && message.contains("put claims/x"),
        "{message}"
    );
    assert!(
        docker.requests().is_empty(),
        "Docker was called: nothing may be half-applied"
    );
}

/// `powerstrip` with `args`, its stdout.
fn powerstrip(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_powerstrip"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The node names `powerstrip nodes` lists.
fn node_names(config: &std::path::Path) -> Vec<String> {
    let (code, out, err) = powerstrip(&["nodes", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    out.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_register_in_etcd_and_vanish_when_they_die() {
    if !require_docker()
        || !powerstrip_testenv::require("etcd", powerstrip_testenv::etcd::INSTALL_HINT)
    {
        return;
    }
    let etcd = EtcdCluster::start(1);
    let config = format!(
        "version = 1\n[store]\nbackend = \"etcd\"\nendpoints = [{:?}]\nprefix = \"/nodes-test/\"\n",
        etcd.endpoint(0)
    );
    let start = |name: &str| {
        ProxyProcess::options()
            .config(&config)
            .args([
                "--node-name",
                name,
                "--node-address",
                "10.99.0.1",
                "--node-ttl",
                "2s",
            ])
            .start()
    };
    let mut a = start("node-a");
    let b = start("node-b");
    let file = b.config_file();
    assert_eq!(node_names(&file), ["node-a", "node-b"]);
    // SIGKILL: no chance to deregister; gone within TTL + 1 s.
    let killed = Instant::now();
    a.kill_now();
    let deadline = killed + Duration::from_secs(3);
    while node_names(&file) != ["node-b"] {
        assert!(
            Instant::now() < deadline,
            "node-a still registered {:?} after SIGKILL",
            killed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // SIGTERM: it leaves at once.
    b.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !node_names(&file).is_empty() {
        assert!(
            Instant::now() < deadline,
            "node-b still registered after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_shows_the_embedded_store_while_the_proxy_runs() {
    if !require_docker() {
        return;
    }
    let proxy = ProxyProcess::options()
        .config("version = 1\n")
        .args(["--node-name", "solo", "--node-label", "zone=a"])
        .start();
    let state_dir = proxy.dir().join("state");
    let dir = state_dir.to_str().unwrap();
    let (code, out, err) = powerstrip(&["state", "ls", "nodes/", "--state-dir", dir]);
    assert_eq!(code, 0, "{err}");
    let key = out
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no node key in:\n{out}"))
        .to_owned();
    assert!(key.starts_with("nodes/"), "{out}");
    let (code, out, err) = powerstrip(&["state", "get", &key, "--state-dir", dir]);
    assert_eq!(code, 0, "{err}");
    let node: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(node["name"], "solo");
    assert_eq!(node["labels"]["zone"], "a");
    let id = std::fs::read_to_string(state_dir.join("node-id")).unwrap();
    assert_eq!(node["id"], id.trim(), "the id kept in the state directory");
    let (code, out, _) = powerstrip(&["nodes", "--state-dir", dir]);
    assert_eq!(code, 0);
    assert!(out.contains("solo") && out.contains("zone=a"), "{out}");
    let (code, _, err) = powerstrip(&["state", "get", "nodes/nobody", "--state-dir", dir]);
    assert_eq!(code, 1);
    assert!(err.contains("no key \"nodes/nobody\""), "{err}");
}
