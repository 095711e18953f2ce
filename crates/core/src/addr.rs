//! Where the proxy listens and where Docker is: `unix:///path` or `tcp://host:port`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// A socket address in Docker's `-H` notation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Address {
    /// A unix domain socket, `unix:///var/run/docker.sock`.
    Unix(PathBuf),
    /// A TCP `host:port`, `tcp://127.0.0.1:2375`.
    Tcp {
        /// A host name or IP address (IPv6 without brackets).
        host: String,
        /// The port.
        port: u16,
    },
}

/// Why an address could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error("bad address {input:?}: {reason} (expected unix:///path/to.sock or tcp://host:port)")]
pub struct AddressError {
    input: String,
    reason: &'static str,
}

impl Address {
    /// True for a TCP address whose host is a loopback IP or `localhost`.
    pub fn is_loopback(&self) -> bool {
        match self {
            Address::Unix(_) => true,
            Address::Tcp { host, .. } => {
                host == "localhost"
                    || host
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
        }
    }

    /// `host:port` for a TCP address, in the form `tokio::net` resolves.
    pub(crate) fn tcp_target(host: &str, port: u16) -> String {
        if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        }
    }
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| AddressError {
            input: input.to_owned(),
            reason,
        };
        if let Some(path) = input.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(err("a unix socket path must be absolute"));
            }
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        let rest = input
            .strip_prefix("tcp://")
            .ok_or_else(|| err("unknown scheme"))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| err("missing port"))?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() {
            return Err(err("missing host"));
        }
        if host.contains('/') {
            return Err(err("a TCP address has no path"));
        }
        let port = port.parse().map_err(|_| err("bad port"))?;
        Ok(Address::Tcp {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(path) => write!(f, "unix://{}", path.display()),
            Address::Tcp { host, port } => write!(f, "tcp://{}", Address::tcp_target(host, *port)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_style_addresses() {
        assert_eq!(
            "unix:///var/run/docker.sock".parse::<Address>().unwrap(),
            Address::Unix("/var/run/docker.sock".into())
        );
        assert_eq!(
            "tcp://127.0.0.1:2375".parse::<Address>().unwrap(),
            Address::Tcp {
                host: "127.0.0.1".into(),
                port: 2375
            }
        );
        let v6: Address = "tcp://[::1]:2375".parse().unwrap();
        assert_eq!(v6.to_string(), "tcp://[::1]:2375");
        assert!(v6.is_loopback());
        assert!(
            !"tcp://0.0.0.0:2375"
                .parse::<Address>()
                .unwrap()
                .is_loopback()
        );
    }

    #[test]
    fn refuses_what_is_not_an_address() {
        for bad in [
            "unix://relative.sock",
            "http://x:1",
            "tcp://host",
            "tcp://:1",
            "tcp://h:99999",
            "tcp://h:1/x/y:2",
        ] {
            let err = bad.parse::<Address>().unwrap_err().to_string();
            assert!(err.starts_with(&format!("bad address {bad:?}")), "{err}");
        }
    }
}
