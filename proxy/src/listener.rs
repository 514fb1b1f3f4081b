//! Binding listeners and accepting connections until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use socket2::{Domain, Socket, Type};
use tokio::net::TcpListener;

use crate::context::Shared;
use crate::error::StartError;
use crate::route::Route;
use crate::shutdown::Watch;
use crate::trace::Direction;

/// Pending connections the kernel may queue while the proxy is busy: bursts of new
/// connections from an app must not be dropped by a sidecar that is merely slow for a moment.
const BACKLOG: i32 = 1024;

/// Binds `addr` with SO_REUSEADDR (quick restarts) and, for IPv6, IPV6_V6ONLY so that an IPv4
/// listener on the same port can coexist.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    let err = |source| StartError::Bind { addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(err)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(err)?;
    }
    socket.set_reuse_address(true).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    socket.listen(BACKLOG).map_err(err)?;
    TcpListener::from_std(socket.into()).map_err(err)
}

/// Accepts until shutdown through the shared accept loop, under the proxy-wide connection
/// cap; each connection runs in its own task holding a shutdown watch.
pub async fn run(
    listener: TcpListener,
    shared: Arc<Shared>,
    direction: Direction,
    route: Route,
    watch: Watch,
) {
    let route = Arc::new(route);
    let limit = Some(shared.conn_limit.clone());
    crate::server::accept_loop(listener, limit, watch, move |stream, peer, watch| {
        let (shared, route) = (shared.clone(), route.clone());
        async move {
            match direction {
                Direction::Inbound => {
                    crate::inbound::accept(shared, stream, peer, &route, watch).await
                }
                Direction::Outbound => {
                    crate::outbound::accept(shared, stream, peer, &route, watch).await
                }
            }
        }
    })
    .await
}
