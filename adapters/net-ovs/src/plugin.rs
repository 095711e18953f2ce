//! Docker's network plugin API (libnetwork's remote driver protocol) served by the same
//! adapter, so that `docker network create -d powerstrip-ovs --ipam-driver null blue`,
//! `docker run --network blue` and compose files' `networks:` use the same overlays,
//! addresses and isolation as the `powerstrip.network` label.
//!
//! Docker's own address management is left out (`--ipam-driver null`): the driver hands
//! out the address from the cluster store when Docker creates the endpoint, so an address
//! is never given twice, whichever way a container joined. The network is the Docker
//! network's name (or its `-o powerstrip.network=NAME` option). Join creates the veth pair
//! (the host end an access port of the network's tag) and hands Docker the other end to
//! move into the container; Leave and DeleteEndpoint undo it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use powerstrip_adapter::context::Stop;
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use crate::adapter::NetOvs;
use crate::link;
use crate::plumb::NETWORK;
use crate::state::Network;

/// `external_ids` key naming the Docker endpoint a port belongs to.
pub const ENDPOINT: &str = "powerstrip-endpoint";
/// The holder prefix of an address handed to a Docker endpoint.
pub const ENDPOINT_HOLDER: &str = "endpoint:";
/// The driver option naming the overlay network (default: the Docker network's name).
pub const NETWORK_OPTION: &str = "powerstrip.network";

/// The plugin's socket: `/run/docker/plugins/<name>.sock`, where Docker looks for it.
pub fn socket(name: &str) -> PathBuf {
    PathBuf::from("/run/docker/plugins").join(format!("{name}.sock"))
}

/// The host end of endpoint `id`'s veth, and the end Docker moves into the container.
pub fn endpoint_ports(id: &str) -> (String, String) {
    let short = &id[..id.len().min(9)];
    (format!("pse{short}"), format!("psp{short}"))
}

/// Serves the plugin API on [`socket`]`(name)` until `stop`.
pub async fn serve(adapter: NetOvs, name: String, stop: Stop) {
    let path = socket(&name);
    if let Some(dir) = path.parent()
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        warn!(path = %dir.display(), error = %e, "cannot create the plugin directory");
        return;
    }
    let _ = std::fs::remove_file(&path);
    let listener = match tokio::net::UnixListener::bind(&path) {
        Ok(listener) => listener,
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot serve the network plugin");
            return;
        }
    };
    info!(driver = %name, socket = %path.display(), "network plugin listening");
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    debug!(error = %e, "plugin accept failed");
                    continue;
                }
            },
        };
        let adapter = adapter.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let adapter = adapter.clone();
                async move { Ok::<_, Infallible>(handle(&adapter, request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
    let _ = std::fs::remove_file(&path);
}

async fn handle(adapter: &NetOvs, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    debug!(call = %path, "network plugin");
    let answer = match path.as_str() {
        "/Plugin.Activate" => Ok(json!({"Implements": ["NetworkDriver"]})),
        "/NetworkDriver.GetCapabilities" => {
            Ok(json!({"Scope": "local", "ConnectivityScope": "global"}))
        }
        "/NetworkDriver.CreateNetwork" | "/NetworkDriver.DeleteNetwork" => Ok(json!({})),
        "/NetworkDriver.CreateEndpoint" => create_endpoint(adapter, &body).await,
        "/NetworkDriver.DeleteEndpoint" => delete_endpoint(adapter, &body).await,
        "/NetworkDriver.EndpointOperInfo" => Ok(json!({"Value": {}})),
        "/NetworkDriver.Join" => join(adapter, &body).await,
        "/NetworkDriver.Leave" => leave(adapter, &body).await,
        "/NetworkDriver.DiscoverNew"
        | "/NetworkDriver.DiscoverDelete"
        | "/NetworkDriver.ProgramExternalConnectivity"
        | "/NetworkDriver.RevokeExternalConnectivity" => Ok(json!({})),
        other => Err(format!("net-ovs: {other} is not implemented")),
    };
    let (status, value) = match answer {
        Ok(value) => (StatusCode::OK, value),
        Err(message) => {
            warn!(call = %path, error = %message, "network plugin call failed");
            (StatusCode::INTERNAL_SERVER_ERROR, json!({ "Err": message }))
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/vnd.docker.plugins.v1.2+json"),
    );
    response
}

fn text<'a>(body: &'a Value, field: &str) -> Result<&'a str, String> {
    body[field]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("net-ovs: the request has no {field}"))
}

/// The overlay network behind Docker network `id`: its `powerstrip.network` option, or its
/// name.
async fn network_of(adapter: &NetOvs, id: &str) -> Result<Network, String> {
    let docker = adapter.context().docker().map_err(|e| e.to_string())?;
    let inspect = docker
        .inspect_network(id, None)
        .await
        .map_err(|e| format!("net-ovs: cannot inspect Docker network {id}: {e}"))?;
    let options: HashMap<String, String> = inspect.options.unwrap_or_default();
    let name = options
        .get(NETWORK_OPTION)
        .cloned()
        .or(inspect.name)
        .unwrap_or_default();
    adapter
        .state()
        .network(&name)
        .await
        .map_err(|e| format!("net-ovs: {e}"))
}

async fn create_endpoint(adapter: &NetOvs, body: &Value) -> Result<Value, String> {
    let network_id = text(body, "NetworkID")?;
    let endpoint = text(body, "EndpointID")?;
    if body["Interface"]["Address"]
        .as_str()
        .is_some_and(|a| !a.is_empty())
    {
        return Err(
            "net-ovs: Docker assigned the address; create the network with --ipam-driver null so that the cluster store does"
                .into(),
        );
    }
    let network = network_of(adapter, network_id).await?;
    let holder = format!("{ENDPOINT_HOLDER}{endpoint}");
    let address = adapter
        .state()
        .reserve(&network, None, &holder, None)
        .await
        .map_err(|e| format!("net-ovs: {e}"))?;
    adapter
        .state()
        .store()
        .put(
            &endpoint_key(endpoint),
            json!({"network": network.name, "address": address})
                .to_string()
                .as_bytes(),
            None,
        )
        .await
        .map_err(|e| format!("net-ovs: {e}"))?;
    info!(endpoint, network = %network.name, %address, "endpoint address");
    let mac = crate::ipam::mac_for(address)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    Ok(json!({"Interface": {
        "Address": format!("{address}/{}", network.subnet.prefix_len()),
        "MacAddress": mac,
    }}))
}

/// The key of an endpoint's record.
pub fn endpoint_key(endpoint: &str) -> String {
    format!("net-ovs/endpoints/{endpoint}")
}

async fn endpoint(adapter: &NetOvs, id: &str) -> Result<(Network, Ipv4Addr), String> {
    let kv = adapter
        .state()
        .store()
        .get(&endpoint_key(id))
        .await
        .map_err(|e| format!("net-ovs: {e}"))?
        .ok_or_else(|| format!("net-ovs: unknown endpoint {id}"))?;
    let record: Value = serde_json::from_slice(&kv.value).map_err(|e| e.to_string())?;
    let name = record["network"].as_str().unwrap_or_default();
    let address: Ipv4Addr = record["address"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("net-ovs: endpoint {id} has no address"))?;
    let network = adapter
        .state()
        .find_network(name)
        .await
        .map_err(|e| format!("net-ovs: {e}"))?
        .ok_or_else(|| format!("net-ovs: network {name} is gone"))?;
    Ok((network, address))
}

async fn join(adapter: &NetOvs, body: &Value) -> Result<Value, String> {
    let id = text(body, "EndpointID")?;
    let (network, address) = endpoint(adapter, id).await?;
    let (host, peer) = endpoint_ports(id);
    let plumber = adapter.plumber();
    let result = async {
        let _ = link::delete(&host).await;
        link::create_veth(&host, &peer).await?;
        if plumber.netdev {
            link::disable_offloads(&host, true).await?;
            link::disable_offloads(&peer, false).await?;
        }
        link::up(&host, plumber.options.mtu).await?;
        link::up(&peer, plumber.options.mtu).await?;
        Ok::<(), link::LinkError>(())
    }
    .await;
    if let Err(e) = result {
        let _ = link::delete(&host).await;
        return Err(format!("net-ovs: {e}"));
    }
    let address_text = address.to_string();
    if let Err(e) = plumber
        .ovs
        .add_port(
            &plumber.options.bridge,
            &host,
            Some(network.tag),
            &[
                (ENDPOINT, id),
                (NETWORK, &network.name),
                ("powerstrip-address", &address_text),
            ],
            &[],
        )
        .await
    {
        let _ = link::delete(&host).await;
        let _ = plumber.ovs.del_port(&plumber.options.bridge, &host).await;
        return Err(format!("net-ovs: {e}"));
    }
    Ok(json!({
        "InterfaceName": {"SrcName": peer, "DstPrefix": "eth"},
        "DisableGatewayService": false,
    }))
}

async fn leave(adapter: &NetOvs, body: &Value) -> Result<Value, String> {
    let id = text(body, "EndpointID")?;
    let (host, _) = endpoint_ports(id);
    let plumber = adapter.plumber();
    plumber
        .ovs
        .del_port(&plumber.options.bridge, &host)
        .await
        .map_err(|e| format!("net-ovs: {e}"))?;
    link::delete(&host)
        .await
        .map_err(|e| format!("net-ovs: {e}"))?;
    Ok(json!({}))
}

async fn delete_endpoint(adapter: &NetOvs, body: &Value) -> Result<Value, String> {
    let id = text(body, "EndpointID")?;
    adapter
        .state()
        .release(&format!("{ENDPOINT_HOLDER}{id}"))
        .await
        .map_err(|e| format!("net-ovs: {e}"))?;
    let _ = adapter
        .state()
        .store()
        .delete(&endpoint_key(id), None)
        .await;
    Ok(json!({}))
}
