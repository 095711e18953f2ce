//! Open vSwitch, through its stable command-line interface (`ovs-vsctl` talks to OVSDB,
//! `ovs-appctl` to `ovs-vswitchd`), every call bounded by a timeout. Ports this adapter
//! owns carry `external_ids:powerstrip-*` keys, so that reconciling finds them (and only
//! them).

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::process::Command;

/// How long one OVS command may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Why an OVS command failed.
#[derive(Debug, thiserror::Error)]
pub enum OvsError {
    /// OVS could not be reached (not running, socket missing) or did not answer in time.
    #[error("Open vSwitch is not reachable ({what}): {reason}")]
    Unreachable {
        /// The command.
        what: String,
        /// Why.
        reason: String,
    },
    /// OVS answered, with an error.
    #[error("Open vSwitch refused `{what}`: {reason}")]
    Refused {
        /// The command.
        what: String,
        /// Its error.
        reason: String,
    },
}

/// One port of a bridge, as far as this adapter cares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Port {
    /// Its name (also its interface's).
    pub name: String,
    /// Its interface's `external_ids`.
    pub external_ids: BTreeMap<String, String>,
    /// Its interface's `ofport` (`-1` when the interface does not exist).
    pub ofport: i64,
}

/// The OVS instance to drive.
#[derive(Clone, Debug, Default)]
pub struct Ovs {
    /// `--db=` for `ovs-vsctl` (the default socket when `None`).
    db: Option<String>,
    /// `-t` for `ovs-appctl` (the default `ovs-vswitchd` when `None`).
    vswitchd: Option<String>,
}

impl Ovs {
    /// The OVS whose database is `db` and whose switch daemon's control socket is
    /// `vswitchd` (defaults when `None`).
    pub fn new(db: Option<String>, vswitchd: Option<String>) -> Ovs {
        Ovs { db, vswitchd }
    }

    async fn run(&self, program: &str, args: &[String]) -> Result<String, OvsError> {
        let what = format!("{program} {}", args.join(" "));
        let mut command = Command::new(program);
        if program == "ovs-vsctl" {
            command.arg(format!("--timeout={}", TIMEOUT.as_secs()));
            if let Some(db) = &self.db {
                command.arg(format!("--db={db}"));
            }
        } else if let Some(target) = &self.vswitchd {
            command.args(["-t", target]);
        }
        command.args(args).kill_on_drop(true);
        let output = tokio::time::timeout(TIMEOUT + Duration::from_secs(1), command.output())
            .await
            .map_err(|_| OvsError::Unreachable {
                what: what.clone(),
                reason: format!("no answer within {}s", TIMEOUT.as_secs()),
            })?
            .map_err(|e| OvsError::Unreachable {
                what: what.clone(),
                reason: format!("cannot run {program}: {e}"),
            })?;
        let reason = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        // ovs-vsctl exits 0 when the database took the change but ovs-vswitchd could not
        // carry it out (a port it cannot open, a datapath it cannot create): that is no
        // success.
        let not_set_up = reason
            .lines()
            .find(|l| l.contains("Error detected while setting up"));
        if output.status.success() {
            if let Some(line) = not_set_up {
                return Err(OvsError::Refused {
                    what,
                    reason: format!(
                        "{} (see ovs-vswitchd's log)",
                        line.trim_start_matches("ovs-vsctl: ")
                            .trim_end_matches("  See ovs-vswitchd log for details.")
                    ),
                });
            }
            return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
        }
        let unreachable = [
            "database connection failed",
            "No such file",
            "Connection refused",
            "timeout",
            "cannot connect",
        ]
        .iter()
        .any(|s| reason.contains(s));
        Err(if unreachable {
            OvsError::Unreachable { what, reason }
        } else {
            OvsError::Refused { what, reason }
        })
    }

    async fn vsctl(&self, args: &[&str]) -> Result<String, OvsError> {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        self.run("ovs-vsctl", &args).await
    }

    /// Whether `bridge` exists (and OVS answers).
    pub async fn bridge_exists(&self, bridge: &str) -> Result<bool, OvsError> {
        match self.vsctl(&["br-exists", bridge]).await {
            Ok(_) => Ok(true),
            // `br-exists` exits 2 for a missing bridge, with nothing on stderr.
            Err(OvsError::Refused { reason, .. }) if reason.is_empty() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Creates `bridge` with `datapath_type` (`system` or `netdev`) unless it exists, and
    /// brings its own interface up.
    pub async fn ensure_bridge(&self, bridge: &str, datapath: &str) -> Result<(), OvsError> {
        self.vsctl(&[
            "--may-exist",
            "add-br",
            bridge,
            "--",
            "set",
            "bridge",
            bridge,
            &format!("datapath_type={datapath}"),
        ])
        .await?;
        Ok(())
    }

    /// Deletes `bridge` and its ports (nothing when absent).
    pub async fn delete_bridge(&self, bridge: &str) -> Result<(), OvsError> {
        self.vsctl(&["--if-exists", "del-br", bridge]).await?;
        Ok(())
    }

    /// Adds interface `port` to `bridge` as an access port of VLAN `tag` (when given),
    /// labelled with `external_ids`. Replaces a port of that name.
    pub async fn add_port(
        &self,
        bridge: &str,
        port: &str,
        tag: Option<u16>,
        external_ids: &[(&str, &str)],
        interface: &[(&str, &str)],
    ) -> Result<(), OvsError> {
        let mut args: Vec<String> = vec![
            "--if-exists".into(),
            "del-port".into(),
            port.into(),
            "--".into(),
            "add-port".into(),
            bridge.into(),
            port.into(),
        ];
        if let Some(tag) = tag {
            args.push(format!("tag={tag}"));
        }
        if !external_ids.is_empty() || !interface.is_empty() {
            args.extend(["--".into(), "set".into(), "interface".into(), port.into()]);
            for (k, v) in interface {
                args.push(format!("{k}={v}"));
            }
            for (k, v) in external_ids {
                args.push(format!("external_ids:{k}=\"{v}\""));
            }
        }
        self.run("ovs-vsctl", &args).await?;
        Ok(())
    }

    /// Removes `port` from `bridge` (nothing when absent).
    pub async fn del_port(&self, bridge: &str, port: &str) -> Result<(), OvsError> {
        self.vsctl(&["--if-exists", "del-port", bridge, port])
            .await?;
        Ok(())
    }

    /// The ports of `bridge`, with their interfaces' `external_ids` and `ofport`.
    pub async fn ports(&self, bridge: &str) -> Result<Vec<Port>, OvsError> {
        let names = self.vsctl(&["list-ports", bridge]).await?;
        let names: Vec<&str> = names
            .lines()
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .collect();
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut args = vec![
            "--format=json",
            "--data=json",
            "--columns=name,external_ids,ofport",
            "list",
            "interface",
        ];
        args.extend(names.iter().copied());
        let json = self.vsctl(&args).await?;
        Ok(parse_interfaces(&json))
    }

    /// Adds a route for tunnel traffic to `cidr` through `bridge` (the userspace datapath
    /// routes tunnels itself).
    pub async fn route_add(&self, cidr: &str, bridge: &str) -> Result<(), OvsError> {
        let args = vec![
            "ovs/route/add".to_owned(),
            cidr.to_owned(),
            bridge.to_owned(),
        ];
        match self.run("ovs-appctl", &args).await {
            Ok(_) => Ok(()),
            // Already there.
            Err(OvsError::Refused { reason, .. }) if reason.contains("exist") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The routes `ovs-vswitchd` uses for tunnels.
    pub async fn routes(&self) -> Result<String, OvsError> {
        self.run("ovs-appctl", &["ovs/route/show".to_owned()]).await
    }
}

/// Reads `ovs-vsctl --format=json --data=json list interface` output.
fn parse_interfaces(json: &str) -> Vec<Port> {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(json) else {
        return Vec::new();
    };
    let headings: Vec<&str> = value["headings"]
        .as_array()
        .map(|h| h.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    let column = |name: &str| headings.iter().position(|h| *h == name);
    let (Some(name_at), Some(ids_at), Some(ofport_at)) =
        (column("name"), column("external_ids"), column("ofport"))
    else {
        return Vec::new();
    };
    let mut ports = Vec::new();
    for row in value["data"].as_array().into_iter().flatten() {
        let name = row[name_at].as_str().unwrap_or_default().to_owned();
        // A map is ["map", [[k, v], ...]].
        let external_ids = row[ids_at][1]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|pair| Some((pair[0].as_str()?.to_owned(), pair[1].as_str()?.to_owned())))
            .collect();
        // An empty set (["set", []]) when the interface was never opened.
        let ofport = row[ofport_at].as_i64().unwrap_or(-1);
        ports.push(Port {
            name,
            external_ids,
            ofport,
        });
    }
    ports
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interfaces_parse_from_ovs_json() {
        let json = r#"{"data":[["psv4f2a9c1d0",["map",[["powerstrip-container","4f2a9c1d"],["powerstrip-network","blue"]]],3],["vx1",["map",[]],["set",[]]]],"headings":["name","external_ids","ofport"]}"#;
        let ports = parse_interfaces(json);
        assert_eq!(ports.len(), 2);
        assert_eq!(ports[0].name, "psv4f2a9c1d0");
        assert_eq!(ports[0].external_ids["powerstrip-network"], "blue");
        assert_eq!(ports[0].ofport, 3);
        assert_eq!(ports[1].ofport, -1);
        assert!(ports[1].external_ids.is_empty());
        assert!(parse_interfaces("not json").is_empty());
    }
}
