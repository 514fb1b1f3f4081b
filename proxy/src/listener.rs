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

/// Accepts until shutdown; each connection runs in its own task holding a shutdown watch.
pub async fn run(
    listener: TcpListener,
    shared: Arc<Shared>,
    direction: Direction,
    route: Route,
    mut watch: Watch,
) {
    let route = Arc::new(route);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = watch.signaled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (shared, route, watch) = (shared.clone(), route.clone(), watch.clone());
        tokio::spawn(async move {
            match direction {
                Direction::Inbound => {
                    crate::inbound::accept(shared, stream, peer, &route, watch).await
                }
                Direction::Outbound => {
                    crate::outbound::accept(shared, stream, peer, &route, watch).await
                }
            }
        });
    }
}
