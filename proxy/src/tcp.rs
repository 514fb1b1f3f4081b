//! Opaque TCP: bytes copied both ways until both sides are done.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::context::Shared;
use crate::trace::Direction;

/// A downstream connection that can be reset (a real socket) or only closed (a tunnel).
pub trait Downstream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Makes the next close send a RST, so the client sees "connection refused/reset" the way
    /// it would without a proxy instead of a clean, misleading EOF.
    fn reset_on_close(&self) {}
}

impl Downstream for tokio::net::TcpStream {
    fn reset_on_close(&self) {
        let _ = socket2::SockRef::from(self).set_linger(Some(std::time::Duration::ZERO));
    }
}

impl<I: Downstream> Downstream for crate::prefixed::Prefixed<I> {
    fn reset_on_close(&self) {
        self.get_ref().reset_on_close()
    }
}

impl Downstream for hyper_util::rt::TokioIo<hyper::upgrade::Upgraded> {}

impl Downstream for tokio::io::DuplexStream {}

/// Connects to `dst` and copies both ways. A half-close is passed on: when one side finishes
/// writing, the other side's write half is shut down and the opposite flow continues.
pub async fn proxy<D: Downstream>(
    shared: &Shared,
    direction: Direction,
    downstream: D,
    dst: SocketAddr,
) -> io::Result<()> {
    let upstream =
        match crate::connect::connect(dst, &shared.self_addrs, shared.connect_timeout).await {
            Ok(s) => s,
            Err(e) => {
                shared.metrics.connect_errors.inc();
                tracing::debug!(%dst, error = %e, "opaque upstream failed, resetting client");
                downstream.reset_on_close();
                return Ok(());
            }
        };
    relay(shared, direction, downstream, upstream).await
}

/// Copies both ways between a client and an upstream connection already open (the one
/// detection opened to let the server speak first), with the same half-close rules as [`proxy`].
pub async fn relay<D: Downstream, U: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    direction: Direction,
    mut downstream: D,
    mut upstream: U,
) -> io::Result<()> {
    let (from_client, to_client) =
        tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await?;
    let bytes = shared.metrics.bytes(direction);
    bytes.received.inc_by(from_client);
    bytes.sent.inc_by(to_client);
    Ok(())
}
