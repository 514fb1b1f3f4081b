//! A connection whose destination is known: detect its protocol, then proxy HTTP or copy TCP.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;

use crate::context::Shared;
use crate::detect::{self, Protocol};
use crate::http::{self, Ctx};
use crate::prefixed::Prefixed;
use crate::shutdown::Watch;
use crate::tcp::{self, Downstream};
use crate::trace::Direction;

/// Serves one downstream connection bound for `dst`. Every route (transparent, static,
/// forward-proxy tunnel) goes through here, so all get the same detection, proxying and tracing.
pub async fn serve<D: Downstream>(
    shared: Arc<Shared>,
    direction: Direction,
    mut io: D,
    peer: SocketAddr,
    dst: SocketAddr,
    watch: Watch,
) {
    let (protocol, prefix) = if crate::config::is_opaque_port(&shared.config, dst.port()) {
        // Server-speaks-first protocols must not wait for a detection timeout.
        (Protocol::Opaque, BytesMut::new())
    } else {
        match detect::detect(&mut io).await {
            Ok((protocol, prefix)) => {
                if protocol == Protocol::Opaque && prefix.is_empty() {
                    shared.metrics.detect_timeouts.inc();
                }
                (protocol, prefix)
            }
            Err(e) => {
                tracing::debug!(%peer, error = %e, "client gone during detection");
                return;
            }
        }
    };
    shared.metrics.path(direction, protocol).connections.inc();
    let io = Prefixed::new(prefix, io);
    match protocol {
        Protocol::Opaque => {
            if let Err(e) = tcp::proxy(&shared, direction, io, dst).await {
                tracing::debug!(%peer, %dst, error = %e, "opaque connection ended with an error");
            }
        }
        Protocol::Http1 | Protocol::Http2 => {
            let ctx = Ctx {
                shared,
                direction,
                protocol,
                peer,
                watch,
            };
            http::serve(ctx, io, dst).await;
        }
    }
}
