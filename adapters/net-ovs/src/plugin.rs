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
use std::net::Ipv4Addr;
use std::path::PathBuf;

use http::StatusCode;
use powerstrip_adapter::context::Stop;
use powerstrip_adapter::plugin::{self, Errors};
use serde_json::{Value, json};
use tracing::info;

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
    plugin::socket(name)
}

/// The host end of endpoint `id`'s veth, and the end Docker moves into the container.
pub fn endpoint_ports(id: &str) -> (String, String) {
    let short = &id[..id.len().min(9)];
    (format!("pse{short}"), format!("psp{short}"))
}

/// Serves the plugin API on [`socket`]`(name)` until `stop` (a failed call answers 500
/// with its `Err`, as libnetwork's remote drivers do).
pub async fn serve(adapter: NetOvs, name: String, stop: Stop) {
    let handle = move |call: String, body: Value| {
        let adapter = adapter.clone();
        async move { handle(&adapter, &call, &body).await }
    };
    plugin::serve(
        &name,
        "network plugin",
        Errors(StatusCode::INTERNAL_SERVER_ERROR),
        stop,
        handle,
    )
    .await;
}

async fn handle(adapter: &NetOvs, call: &str, body: &Value) -> Result<Value, String> {
    match call {
        "/Plugin.Activate" => Ok(json!({"Implements": ["NetworkDriver"]})),
        "/NetworkDriver.GetCapabilities" => {
            Ok(json!({"Scope": "local", "ConnectivityScope": "global"}))
        }
        "/NetworkDriver.CreateNetwork" | "/NetworkDriver.DeleteNetwork" => Ok(json!({})),
        "/NetworkDriver.CreateEndpoint" => create_endpoint(adapter, body).await,
        "/NetworkDriver.DeleteEndpoint" => delete_endpoint(adapter, body).await,
        "/NetworkDriver.EndpointOperInfo" => Ok(json!({"Value": {}})),
        "/NetworkDriver.Join" => join(adapter, body).await,
        "/NetworkDriver.Leave" => leave(adapter, body).await,
        "/NetworkDriver.DiscoverNew"
        | "/NetworkDriver.DiscoverDelete"
        | "/NetworkDriver.ProgramExternalConnectivity"
        | "/NetworkDriver.RevokeExternalConnectivity" => Ok(json!({})),
        other => Err(format!("net-ovs: {other} is not implemented")),
    }
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
