//! Outbound: connections from the local app to the network (CLIENT spans).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use crate::context::Shared;
use crate::route::Route;
use crate::shutdown::Watch;
use crate::trace::Direction;

/// Transparent: the original destination. A connection that was not redirected was made to
/// the listener itself, by a client configured with `HTTP_PROXY`: it is served as an explicit
/// HTTP forward proxy, but only to the pod itself (loopback or a pod address). A stranger is
/// closed before a byte is read: the forward proxy would otherwise be an open door into the
/// pod's loopback services and everything the pod may reach. Static routes go to their fixed
/// target.
pub async fn accept(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    route: &Route,
    watch: Watch,
) {
    let dst = match route {
        Route::Transparent => match crate::orig_dst::original_dst(&stream) {
            Some(dst) => dst,
            None => {
                let local = stream.local_addr().map(|a| a.ip());
                let own = local.is_ok_and(|l| shared.self_addrs.pod().is_own_peer(peer.ip(), l));
                if !own {
                    shared.metrics.strangers_refused.inc();
                    tracing::debug!(%peer, "forward-proxy client is not the pod itself; closing");
                    return;
                }
                return crate::forward::serve(shared, stream, peer, watch).await;
            }
        },
        Route::Static(target) => match target.resolve().await {
            Ok(dst) => dst,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "outbound route target");
                crate::tcp::Downstream::reset_on_close(&stream);
                return;
            }
        },
    };
    crate::connection::serve(shared, Direction::Outbound, stream, peer, dst, watch).await;
}
