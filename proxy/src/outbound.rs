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
/// HTTP forward proxy. Static routes go to their fixed target.
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
            None => return crate::forward::serve(shared, stream, peer, watch).await,
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
