//! Docker's volume plugin API (`VolumeDriver.*`) served by the same adapter, so that
//! `docker volume create -d powerstrip -o profile=gold demo`, `docker run --volume-driver
//! powerstrip -v demo:/data`, `docker volume ls|inspect|rm` and compose files' `volumes:`
//! use the same datasets, leases and moves as `-v demo@gold:/data` through the proxy.
//!
//! The scope is `global`: a dataset is one cluster-wide object, wherever it lives. A mount
//! takes a lease for Docker's mount id (moving the dataset here first if it lives on
//! another node and nobody uses it there); an unmount releases it.
//!
//! Once Docker has used a volume plugin, it asks it about every named volume, and while
//! the plugin does not answer each such lookup waits up to ~15 s. So the socket comes up
//! as soon as the adapter does (calls wait for the pool, not for the socket), and a reload
//! hands it over without a gap ([`powerstrip_adapter::plugin::serve`]).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use http::StatusCode;
use powerstrip_adapter::context::Stop;
use powerstrip_adapter::plugin::{self, Errors};
use serde_json::{Value, json};

use crate::adapter::Volumes;
use crate::model::Dataset;
use crate::options::format_size;

/// The Docker mount id's lease holder prefix.
pub const MOUNT: &str = "mount:";

/// The plugin's socket: `/run/docker/plugins/<name>.sock`, where Docker looks for it.
pub fn socket(name: &str) -> PathBuf {
    plugin::socket(name)
}

/// Serves the plugin API on [`socket`]`(name)` until `stop` (errors travel in `Err` with a
/// 200, as Docker's plugin helpers answer for volume drivers).
pub async fn serve(adapter: Volumes, name: String, stop: Stop) {
    let handle = move |call: String, body: Value| {
        let adapter = adapter.clone();
        async move { handle(&adapter, &call, &body).await }
    };
    plugin::serve(&name, "volume plugin", Errors(StatusCode::OK), stop, handle).await;
}

async fn handle(adapter: &Volumes, call: &str, body: &Value) -> Result<Value, String> {
    match call {
        "/Plugin.Activate" => Ok(json!({"Implements": ["VolumeDriver"]})),
        "/VolumeDriver.Capabilities" => Ok(json!({"Capabilities": {"Scope": "global"}})),
        "/VolumeDriver.Create" => create(adapter, body).await,
        "/VolumeDriver.Remove" => remove(adapter, body).await,
        "/VolumeDriver.Mount" => mount(adapter, body).await,
        "/VolumeDriver.Unmount" => unmount(adapter, body).await,
        "/VolumeDriver.Path" => path_of(adapter, body).await,
        "/VolumeDriver.Get" => get(adapter, body).await,
        "/VolumeDriver.List" => list(adapter).await,
        other => Err(format!("volumes: {other} is not implemented")),
    }
}

fn name_of(body: &Value) -> Result<&str, String> {
    let name = body["Name"]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| "volumes: the request names no volume".to_owned())?;
    crate::names::check_name(name).map_err(|e| format!("volumes: {e}"))?;
    Ok(name)
}

async fn dataset(adapter: &Volumes, name: &str) -> Result<Dataset, String> {
    adapter
        .state()
        .dataset(name)
        .await
        .map_err(|e| format!("volumes: {e}"))?
        .ok_or_else(|| format!("volumes: no such volume: {name}"))
}

async fn create(adapter: &Volumes, body: &Value) -> Result<Value, String> {
    let name = name_of(body)?;
    let mut profile = adapter.options().default_profile.clone();
    if let Some(options) = body["Opts"].as_object() {
        for (key, value) in options {
            match (key.as_str(), value.as_str()) {
                ("profile", Some(p)) => profile = Some(p.to_owned()),
                _ => {
                    return Err(format!(
                        "volumes: unknown option {key:?} (the one option is profile=NAME)"
                    ));
                }
            }
        }
    }
    adapter
        .make_dataset(name, profile.as_deref())
        .await
        .map_err(|e| e.message().to_owned())?;
    Ok(json!({}))
}

async fn remove(adapter: &Volumes, body: &Value) -> Result<Value, String> {
    let name = name_of(body)?;
    adapter
        .remove_anywhere(name)
        .await
        .map_err(|e| e.message().to_owned())?;
    Ok(json!({}))
}

async fn mount(adapter: &Volumes, body: &Value) -> Result<Value, String> {
    let name = name_of(body)?;
    let id = body["ID"].as_str().unwrap_or_default();
    if id.is_empty() {
        return Err("volumes: the mount request has no ID".into());
    }
    let path = adapter
        .lease_here(name, &format!("{MOUNT}{id}"))
        .await
        .map_err(|e| e.message().to_owned())?;
    Ok(json!({ "Mountpoint": path }))
}

async fn unmount(adapter: &Volumes, body: &Value) -> Result<Value, String> {
    let name = name_of(body)?;
    let id = body["ID"].as_str().unwrap_or_default();
    adapter
        .release_lease(name, &format!("{MOUNT}{id}"))
        .await
        .map_err(|e| e.message().to_owned())?;
    Ok(json!({}))
}

/// Where the dataset is mounted from on this node: its path when it lives here.
async fn here(adapter: &Volumes, d: &Dataset) -> String {
    if d.primary != adapter.context().node().id {
        return String::new();
    }
    match adapter.backend().await {
        Ok(backend) => backend.dataset_path(&d.id).display().to_string(),
        Err(_) => String::new(),
    }
}

async fn path_of(adapter: &Volumes, body: &Value) -> Result<Value, String> {
    let d = dataset(adapter, name_of(body)?).await?;
    Ok(json!({ "Mountpoint": here(adapter, &d).await }))
}

async fn describe(adapter: &Volumes, d: &Dataset) -> Value {
    let primary = adapter
        .context()
        .nodes()
        .await
        .ok()
        .and_then(|nodes| {
            nodes
                .into_iter()
                .find(|n| n.id == d.primary)
                .map(|n| n.name)
        })
        .unwrap_or_else(|| d.primary.clone());
    let mut status = json!({
        "node": primary,
        "profile": d.profile.clone().unwrap_or_default(),
        "size": d.limit.map(format_size).unwrap_or_else(|| "no limit".into()),
        "leases": d.leases.len(),
    });
    if let Some(m) = &d.moving {
        status["moving"] = json!(format!("to {} ({} so far)", m.to, format_size(m.progress)));
    }
    json!({
        "Name": d.name,
        "Mountpoint": here(adapter, d).await,
        "Status": status,
    })
}

async fn get(adapter: &Volumes, body: &Value) -> Result<Value, String> {
    let d = dataset(adapter, name_of(body)?).await?;
    Ok(json!({ "Volume": describe(adapter, &d).await }))
}

async fn list(adapter: &Volumes) -> Result<Value, String> {
    let (datasets, _) = adapter
        .state()
        .datasets()
        .await
        .map_err(|e| format!("volumes: {e}"))?;
    let mut volumes = Vec::new();
    for d in &datasets {
        volumes.push(json!({ "Name": d.name, "Mountpoint": here(adapter, d).await }));
    }
    Ok(json!({ "Volumes": volumes }))
}

/// How long a request for another node waits for its answer.
pub const REQUEST_WAIT: Duration = Duration::from_secs(30);

/// Waits for the request at `key` to be carried out, up to `wait`; its message, or why it
/// failed (with its status).
pub async fn wait_for(
    state: &crate::state::State,
    key: &str,
    wait: Duration,
) -> Result<String, (u16, String)> {
    let deadline = Instant::now() + wait;
    loop {
        match state.request(key).await {
            Ok(Some(request)) => match request.outcome {
                Some(crate::state::Outcome::Done { message }) => {
                    let _ = state.store().delete(key, None).await;
                    return Ok(message);
                }
                Some(crate::state::Outcome::Failed { message, status }) => {
                    let _ = state.store().delete(key, None).await;
                    return Err((status, message));
                }
                None => {}
            },
            Ok(None) => return Err((500, "the request was removed before it was answered".into())),
            Err(e) => return Err((503, e.to_string())),
        }
        if Instant::now() >= deadline {
            let _ = state.store().delete(key, None).await;
            return Err((
                504,
                format!(
                    "no volumes adapter carried it out within {}s (is the node that must do it running?)",
                    wait.as_secs()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
