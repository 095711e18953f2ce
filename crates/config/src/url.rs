//! Where an HTTP adapter lives: `http(s)://host[:port]/path` or `unix:///path.sock`.

use std::fmt;
use std::path::PathBuf;

/// The address hooks are POSTed to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdapterUrl {
    /// `http://host[:port]/path?query` or `https://...`.
    Tcp {
        /// Whether to speak TLS (`https://`).
        https: bool,
        /// Host name or address; IPv6 addresses without their brackets.
        host: String,
        /// The port written, or 80 / 443 by default.
        port: u16,
        /// The request target hooks are POSTed to; `/` when the URL has no path.
        path_and_query: String,
    },
    /// `unix:///absolute/path.sock`; hooks are POSTed to `/` over the socket.
    Unix {
        /// The socket's absolute path.
        socket: PathBuf,
    },
}

impl AdapterUrl {
    /// Parses an adapter URL; the error says what is wrong with it.
    ///
    /// ```
    /// use powerstrip_config::AdapterUrl;
    ///
    /// let url = AdapterUrl::parse("http://weave/extension").unwrap();
    /// assert_eq!(url, AdapterUrl::Tcp { https: false, host: "weave".into(), port: 80, path_and_query: "/extension".into() });
    /// assert!(AdapterUrl::parse("ftp://weave").is_err());
    /// ```
    pub fn parse(s: &str) -> Result<AdapterUrl, String> {
        if s.contains(char::is_whitespace) {
            return Err("a URL cannot contain whitespace".into());
        }
        if let Some(path) = s.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(
                    "a unix socket URL needs an absolute path, e.g. unix:///run/adapter.sock"
                        .into(),
                );
            }
            if path.len() == 1 {
                return Err("missing socket path after unix://".into());
            }
            return Ok(AdapterUrl::Unix {
                socket: PathBuf::from(path),
            });
        }
        let (https, rest) = if let Some(rest) = s.strip_prefix("http://") {
            (false, rest)
        } else if let Some(rest) = s.strip_prefix("https://") {
            (true, rest)
        } else {
            return Err("expected http://, https:// or unix:///absolute/path".into());
        };
        if rest.contains('#') {
            return Err("a fragment (#...) is never sent; remove it".into());
        }
        let (authority, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
        if authority.contains('@') {
            return Err("user info (user@host) is not supported".into());
        }
        let (host, port) = split_host_port(authority)?;
        Ok(AdapterUrl::Tcp {
            https,
            host: host.to_owned(),
            port: port.unwrap_or(if https { 443 } else { 80 }),
            path_and_query: match path {
                "" => "/".to_owned(),
                p if p.starts_with('?') => format!("/{p}"),
                p => p.to_owned(),
            },
        })
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_host_port(authority: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("unclosed [ in an IPv6 host")?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{host:?} in brackets is not an IPv6 address"));
        }
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err(format!("unexpected {after:?} after the IPv6 host")),
            },
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("missing host".into());
    }
    if !authority.starts_with('[') && host.contains([':', '[', ']']) {
        return Err(format!(
            "invalid host {host:?} (an IPv6 address goes in brackets: http://[::1]:9000/)"
        ));
    }
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(port) if port > 0 => Some(port),
            _ => return Err(format!("invalid port {p:?}")),
        },
    };
    Ok((host, port))
}

impl fmt::Display for AdapterUrl {
    /// The URL text; the port is written only when it is not the scheme's default.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdapterUrl::Tcp {
                https,
                host,
                port,
                path_and_query,
            } => {
                let (scheme, default_port) = if *https { ("https", 443) } else { ("http", 80) };
                write!(f, "{scheme}://")?;
                if host.contains(':') {
                    write!(f, "[{host}]")?;
                } else {
                    f.write_str(host)?;
                }
                if *port != default_port {
                    write!(f, ":{port}")?;
                }
                f.write_str(path_and_query)
            }
            AdapterUrl::Unix { socket } => write!(f, "unix://{}", socket.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(https: bool, host: &str, port: u16, path_and_query: &str) -> AdapterUrl {
        AdapterUrl::Tcp {
            https,
            host: host.into(),
            port,
            path_and_query: path_and_query.into(),
        }
    }

    #[test]
    fn parses_and_round_trips() {
        for (text, url) in [
            (
                "http://weave/extension",
                tcp(false, "weave", 80, "/extension"),
            ),
            (
                "http://127.0.0.1:9000/flocker-adapter",
                tcp(false, "127.0.0.1", 9000, "/flocker-adapter"),
            ),
            (
                "https://policy.example/hook?x=1",
                tcp(true, "policy.example", 443, "/hook?x=1"),
            ),
            ("http://[::1]:8080/a", tcp(false, "::1", 8080, "/a")),
            (
                "unix:///run/adapter.sock",
                AdapterUrl::Unix {
                    socket: "/run/adapter.sock".into(),
                },
            ),
        ] {
            assert_eq!(AdapterUrl::parse(text).unwrap(), url, "{text}");
            assert_eq!(url.to_string(), text);
        }
        // Not the same text, the same URL.
        assert_eq!(
            AdapterUrl::parse("http://w").unwrap(),
            tcp(false, "w", 80, "/")
        );
        assert_eq!(
            AdapterUrl::parse("http://w:80").unwrap().to_string(),
            "http://w/"
        );
        assert_eq!(
            AdapterUrl::parse("http://w?q").unwrap(),
            tcp(false, "w", 80, "/?q")
        );
    }

    #[test]
    fn says_what_is_wrong() {
        for (text, reason) in [
            (
                "ftp://x/",
                "expected http://, https:// or unix:///absolute/path",
            ),
            (
                "weave/extension",
                "expected http://, https:// or unix:///absolute/path",
            ),
            ("http:///x", "missing host"),
            ("http://:80/x", "missing host"),
            ("http://w:99999/x", "invalid port \"99999\""),
            ("http://w:0/x", "invalid port \"0\""),
            ("http://w:/x", "invalid port \"\""),
            ("http://u@w/x", "user info (user@host) is not supported"),
            ("http://w/x#y", "a fragment (#...) is never sent; remove it"),
            ("http://w/a b", "a URL cannot contain whitespace"),
            ("http://[::1/x", "unclosed [ in an IPv6 host"),
            (
                "unix://run/a.sock",
                "a unix socket URL needs an absolute path, e.g. unix:///run/adapter.sock",
            ),
            ("unix:///", "missing socket path after unix://"),
        ] {
            assert_eq!(AdapterUrl::parse(text).unwrap_err(), reason, "{text}");
        }
    }
}
