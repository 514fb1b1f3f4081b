//! A connection whose destination is known: detect its protocol, then proxy HTTP or copy TCP.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::rt::TokioIo;

use crate::context::Shared;
use crate::detect::{self, DetectError, Protocol};
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
    let detections = shared.metrics.detections(direction);
    if crate::config::is_opaque_port(&shared.config, dst.port()) {
        // Server-speaks-first protocols must not wait for the client.
        detections.skipped.inc();
        shared
            .metrics
            .path(direction, Protocol::Opaque)
            .connections
            .inc();
        if let Err(e) = tcp::proxy(&shared, direction, io, dst).await {
            tracing::debug!(%peer, %dst, error = %e, "opaque connection ended with an error");
        }
        return;
    }

    // Through the pooled clients' connector: the connect timeout and the per-destination cap.
    let connect = || async {
        shared
            .upstream
            .connector()
            .dial(dst)
            .await
            .map(TokioIo::into_inner)
    };
    let mut draining = watch.clone();
    let shutdown = async move { draining.signaled().await };
    let detected = match detect::detect(&mut io, connect, shutdown, Default::default()).await {
        Ok(d) => d,
        Err(e) => {
            detections.failed.inc();
            if matches!(e, DetectError::Connect(_)) {
                shared.metrics.connect_errors.inc();
            }
            if !matches!(e, DetectError::Client(_)) {
                // As the upstream refused or reset: the client sees a reset, not a clean EOF.
                io.reset_on_close();
            }
            tracing::debug!(%peer, %dst, error = %e, "connection ended during detection");
            return;
        }
    };
    detections.decided(detected.detection).inc();
    let Some(protocol) = detected.detection.protocol() else {
        tracing::debug!(%peer, %dst, detection = detected.detection.as_str(),
            "closing a connection on which nothing was said");
        return;
    };
    shared.metrics.path(direction, protocol).connections.inc();
    let io = Prefixed::new(detected.prefix, io);
    match protocol {
        Protocol::Opaque => {
            let result = match detected.upstream {
                // The connection the server-first check opened carries on: no second connect.
                Some(upstream) => tcp::relay(&shared, direction, io, upstream).await,
                None => tcp::proxy(&shared, direction, io, dst).await,
            };
            if let Err(e) = result {
                tracing::debug!(%peer, %dst, error = %e, "opaque connection ended with an error");
            }
        }
        Protocol::Http1 | Protocol::Http2 => {
            // HTTP goes through the pooled clients; an upstream connection opened for the
            // server-first check closes here, unused, as an idle pooled connection would.
            drop(detected.upstream);
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

#[cfg(test)]
mod tests {
    use crate::connect::SelfAddrs;
    use crate::peer::PodAddrs;
    use crate::route::Route;
    use std::time::Duration;

    /// The future of a proxied connection is what each held connection's task keeps for its
    /// whole life (with hyper's two 8 KiB buffers, most of an idle keep-alive connection's
    /// memory): 10 KiB once, when the task kept it twice and every HTTP/1 connection carried
    /// room for an inline HTTP/2 one. A rare or large branch belongs in a box.
    #[tokio::test]
    async fn a_held_connection_future_stays_small() {
        let config = crate::config::fixed(crate::config::Snapshot::default_config());
        let mut registry = prometheus_client::registry::Registry::default();
        let shared = crate::context::Shared::new(
            config,
            crate::trace::Tracer::disabled(),
            crate::metrics::Metrics::new(&mut registry),
            SelfAddrs::new(Vec::new(), PodAddrs::new([])),
            Duration::from_secs(1),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        let shutdown = crate::shutdown::Shutdown::new();
        let route = Route::Transparent;
        let served = crate::inbound::accept(shared, stream, peer, &route, shutdown.watch());
        let size = std::mem::size_of_val(&served);
        // 2.5 KiB (release and debug builds alike), 4.9 KiB before the HTTP/2 box.
        assert!(size <= 3 * 1024, "{size} bytes per connection task");
    }
}
