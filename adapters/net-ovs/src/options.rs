//! `net-ovs`'s options: what the operator writes in its table in `adapters.toml` (or with
//! `--set` for the served binary).

use std::collections::BTreeMap;
use std::time::Duration;

use ipnet::Ipv4Net;
use powerstrip_adapter::builtin::{Options as Raw, duration, parse_options};
use serde::Deserialize;

use crate::ipam::{overlaps, parse_subnet};

/// How containers' frames reach Open vSwitch and other hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Datapath {
    /// The kernel datapath where the `openvswitch` module is loaded, else userspace.
    Auto,
    /// The kernel datapath.
    System,
    /// The userspace datapath (`datapath_type=netdev`): tunnels need the underlay on an
    /// OVS bridge, a tunnel route, and TX checksum offload off.
    Netdev,
}

/// The underlay: where VXLAN packets leave this host.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Underlay {
    /// The interface that carries traffic to the other hosts (`eth1`, a veth in tests).
    /// With the userspace datapath it is moved onto an OVS bridge, and its addresses onto
    /// that bridge's own interface.
    pub interface: String,
    /// That OVS bridge (userspace datapath only).
    #[serde(default = "default_underlay_bridge")]
    pub bridge: String,
}

fn default_underlay_bridge() -> String {
    crate::fabric::UNDERLAY_BRIDGE.to_owned()
}

/// The options as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Written {
    #[serde(default)]
    networks: BTreeMap<String, String>,
    #[serde(default)]
    pool: Option<String>,
    #[serde(default = "default_pool_prefix")]
    pool_prefix: u8,
    #[serde(default = "default_bridge")]
    bridge: String,
    #[serde(default = "default_mtu")]
    mtu: u32,
    #[serde(default)]
    ovsdb: Option<String>,
    #[serde(default)]
    vswitchd: Option<String>,
    #[serde(default = "default_datapath")]
    datapath: Datapath,
    #[serde(default)]
    underlay: Option<Underlay>,
    #[serde(default = "default_reconcile", with = "duration")]
    reconcile: Duration,
    #[serde(default)]
    plugin: Option<String>,
}

fn default_pool_prefix() -> u8 {
    24
}
fn default_bridge() -> String {
    "powerstrip0".into()
}
fn default_mtu() -> u32 {
    1450
}
fn default_datapath() -> Datapath {
    Datapath::Auto
}
fn default_reconcile() -> Duration {
    Duration::from_secs(10)
}

/// The validated options.
#[derive(Clone, Debug)]
pub struct Options {
    /// Networks with a fixed subnet, by name.
    pub networks: BTreeMap<String, Ipv4Net>,
    /// Where subnets of networks created on first use come from, if anywhere.
    pub pool: Option<Ipv4Net>,
    /// The size of those subnets.
    pub pool_prefix: u8,
    /// The OVS bridge containers are attached to.
    pub bridge: String,
    /// The MTU of the containers' overlay interfaces.
    pub mtu: u32,
    /// The OVSDB socket (`unix:/run/openvswitch/db.sock` when `None`).
    pub ovsdb: Option<String>,
    /// The `ovs-vswitchd` control socket (`ovs-appctl -t`), when not the default.
    pub vswitchd: Option<String>,
    /// Which datapath.
    pub datapath: Datapath,
    /// The underlay interface, for tunnels to other hosts.
    pub underlay: Option<Underlay>,
    /// How often everything is reconciled (besides at every container event).
    pub reconcile: Duration,
    /// The network plugin's driver name (`docker network create -d NAME`), when it is
    /// served.
    pub plugin: Option<String>,
}

impl Options {
    /// Parses and validates `raw`.
    pub fn parse(raw: &Raw) -> Result<Options, String> {
        let written: Written = parse_options(raw)?;
        let mut networks = BTreeMap::new();
        for (name, subnet) in &written.networks {
            check_name(name)?;
            let subnet = parse_subnet(subnet).map_err(|e| format!("networks.{name}: {e}"))?;
            if let Some((other, _)) = networks
                .iter()
                .find(|(_, s): &(&String, &Ipv4Net)| overlaps(**s, subnet))
            {
                return Err(format!(
                    "networks.{name}: {subnet} overlaps network {other}"
                ));
            }
            networks.insert(name.clone(), subnet);
        }
        let pool = match &written.pool {
            None => None,
            Some(text) => Some(parse_subnet(text).map_err(|e| format!("pool: {e}"))?),
        };
        if let Some(pool) = pool {
            if !(pool.prefix_len()..=29).contains(&written.pool_prefix) {
                return Err(format!(
                    "pool_prefix: {} must be between {} (the pool's own) and 29",
                    written.pool_prefix,
                    pool.prefix_len()
                ));
            }
            if let Some((name, _)) = networks.iter().find(|(_, s)| overlaps(**s, pool)) {
                return Err(format!("pool: {pool} overlaps network {name}"));
            }
        }
        if !(576..=9000).contains(&written.mtu) {
            return Err(format!("mtu: {} must be between 576 and 9000", written.mtu));
        }
        if let Some(plugin) = &written.plugin
            && (plugin.is_empty()
                || !plugin
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(format!(
                "plugin: {plugin:?} must be a driver name: letters, digits, '-', '_' or '.'"
            ));
        }
        if written.bridge.is_empty() || written.bridge.len() > 15 {
            return Err(format!(
                "bridge: {:?} must be 1 to 15 characters (an interface name)",
                written.bridge
            ));
        }
        Ok(Options {
            networks,
            pool,
            pool_prefix: written.pool_prefix,
            bridge: written.bridge,
            mtu: written.mtu,
            ovsdb: written.ovsdb,
            vswitchd: written.vswitchd,
            datapath: written.datapath,
            underlay: written.underlay,
            reconcile: written.reconcile,
            plugin: written.plugin,
        })
    }
}

/// Network names go into labels and store keys: letters, digits, `-`, `_`, `.`.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "network name {name:?} must be 1 to 64 letters, digits, '-', '_' or '.'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: serde_json::Value) -> Result<Options, String> {
        let serde_json::Value::Object(map) = json else {
            panic!("an object")
        };
        Options::parse(&map)
    }

    #[test]
    fn defaults_and_networks() {
        let options = parse(serde_json::json!({
            "networks": {"blue": "10.50.0.0/24", "red": "10.51.0.0/24"},
            "pool": "10.60.0.0/16",
        }))
        .unwrap();
        assert_eq!(options.networks.len(), 2);
        assert_eq!(options.bridge, "powerstrip0");
        assert_eq!(options.mtu, 1450);
        assert_eq!(options.pool_prefix, 24);
        assert_eq!(options.datapath, Datapath::Auto);
        assert_eq!(options.reconcile, Duration::from_secs(10));
    }

    #[test]
    fn bad_options_say_what_is_wrong() {
        let err = |json| parse(json).unwrap_err();
        assert_eq!(
            err(serde_json::json!({"networks": {"blue": "10.50.0.0/24", "red": "10.50.0.128/25"}})),
            "networks.red: 10.50.0.128/25 overlaps network blue"
        );
        assert_eq!(
            err(serde_json::json!({"networks": {"blue": "ten"}})),
            "networks.blue: \"ten\" is not an IPv4 subnet such as 10.50.0.0/24"
        );
        assert!(
            err(serde_json::json!({"networks": {"bl ue": "10.50.0.0/24"}}))
                .contains("network name")
        );
        assert_eq!(
            err(serde_json::json!({"pool": "10.50.0.0/16", "networks": {"blue": "10.50.3.0/24"}})),
            "pool: 10.50.0.0/16 overlaps network blue"
        );
        assert!(err(serde_json::json!({"mtu": 100})).starts_with("mtu:"));
        assert!(err(serde_json::json!({"colour": "blue"})).contains("unknown field `colour`"));
        assert!(err(serde_json::json!({"datapath": "dpdk"})).contains("unknown variant"));
    }
}
