//! Where a listener's connections go: learned from SO_ORIGINAL_DST, or a static target.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use crate::connect::resolve;
use crate::error::{ConnectError, StartError};

/// `host:port` of a static route; a name is resolved per connection so DNS changes apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Addr(SocketAddr),
    Name { host: String, port: u16 },
}

impl Target {
    pub async fn resolve(&self) -> Result<SocketAddr, ConnectError> {
        match self {
            Target::Addr(a) => Ok(*a),
            Target::Name { host, port } => resolve(host, *port).await,
        }
    }
}

impl FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Target::Addr(addr));
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?} has no port"))?;
        let port = port
            .parse::<u16>()
            .map_err(|_| format!("{s:?} has an invalid port"))?;
        if host.is_empty() || host.contains(['/', ' ', '[', ']']) {
            return Err(format!("{s:?} has an invalid host"));
        }
        Ok(Target::Name {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Addr(a) => write!(f, "{a}"),
            Target::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// `--inbound LISTEN=TARGET` / `--outbound LISTEN=TARGET`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticRoute {
    pub listen: SocketAddr,
    pub target: Target,
}

impl FromStr for StaticRoute {
    type Err = StartError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || StartError::Route(s.to_owned());
        let (listen, target) = s.split_once('=').ok_or_else(bad)?;
        Ok(StaticRoute {
            listen: listen.trim().parse().map_err(|_| bad())?,
            target: target.trim().parse().map_err(|_| bad())?,
        })
    }
}

/// How a listener learns the destination of its connections.
#[derive(Clone, Debug)]
pub enum Route {
    /// SO_ORIGINAL_DST; a connection that was not redirected is for the listener itself.
    Transparent,
    Static(Target),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_routes() {
        let r: StaticRoute = "0.0.0.0:9080=127.0.0.1:8080".parse().unwrap();
        assert_eq!(r.listen, "0.0.0.0:9080".parse().unwrap());
        assert_eq!(r.target, Target::Addr("127.0.0.1:8080".parse().unwrap()));
        let r: StaticRoute = "127.0.0.1:13306=db.local:3306".parse().unwrap();
        assert_eq!(
            r.target,
            Target::Name {
                host: "db.local".into(),
                port: 3306
            }
        );
        let r: StaticRoute = "[::1]:80=[::1]:8080".parse().unwrap();
        assert_eq!(r.target, Target::Addr("[::1]:8080".parse().unwrap()));
    }

    #[test]
    fn rejects_bad_routes() {
        for bad in [
            "9080=8080",
            "0.0.0.0:9080",
            "0.0.0.0:9080=db",
            "x=y:1",
            "0.0.0.0:1=h:99999",
        ] {
            assert!(bad.parse::<StaticRoute>().is_err(), "{bad}");
        }
    }
}
