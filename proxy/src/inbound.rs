//! Inbound: connections from the network for the local app (SERVER spans).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use crate::context::Shared;
use crate::route::Route;
use crate::shutdown::Watch;
use crate::trace::Direction;

/// Transparent: the app's own address (pod IP and original port), so apps bound to the pod IP
/// or to 0.0.0.0 both work. A connection that was not redirected is refused (closed): nothing
/// legitimate dials the inbound port directly. Nor is one whose original destination is one of
/// the proxy's own listeners: that is a peer outside the pod dialling `POD_IP:15001` (redirected
/// here since only the admin and probe ports are exempt), and dialling it would hand a stranger
/// the forward proxy, or loop.
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
                tracing::debug!(%peer, "inbound connection was not redirected; closing");
                return;
            }
        },
        Route::Static(target) => match target.resolve().await {
            Ok(dst) => dst,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "inbound route target");
                crate::tcp::Downstream::reset_on_close(&stream);
                return;
            }
        },
    };
    if shared.self_addrs.contains(dst) {
        shared.metrics.strangers_refused.inc();
        tracing::debug!(%peer, %dst, "inbound connection to the proxy's own port; closing");
        return;
    }
    crate::connection::serve(shared, Direction::Inbound, stream, peer, dst, watch).await;
}
