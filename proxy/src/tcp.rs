//! Opaque TCP: bytes copied both ways until both sides are done.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::context::Shared;
use crate::idle::{Activity, Watched};
use crate::trace::Direction;

/// Buffer of each flow of an opaque connection. tokio's default (8 KiB) costs a read and a write
/// syscall per 8 KiB, which made the two sidecars of a bulk transfer the bottleneck at a third
/// of direct throughput; 64 KiB, the most a loopback or LAN socket hands over in one read here,
/// cuts the syscalls eightfold. The price is 128 KiB of heap per open opaque connection,
/// allocated when copying starts (opaque TCP, tunnels, upgraded HTTP; plain HTTP does not pay it).
const COPY_BUFFER: usize = 64 * 1024;

/// A downstream connection that can be reset (a real socket) or only closed (a tunnel).
pub trait Downstream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Makes the next close send a RST, so the client sees "connection refused/reset" the way
    /// it would without a proxy instead of a clean, misleading EOF.
    fn reset_on_close(&self) {}

    /// The socket's pending error (a reset from the peer), taken: a client that is gone for
    /// good, seen without reading. `None` when there is none or the stream cannot tell.
    fn take_error(&self) -> Option<io::Error> {
        None
    }
}

impl Downstream for tokio::net::TcpStream {
    fn reset_on_close(&self) {
        let _ = socket2::SockRef::from(self).set_linger(Some(std::time::Duration::ZERO));
    }

    fn take_error(&self) -> Option<io::Error> {
        tokio::net::TcpStream::take_error(self).ok().flatten()
    }
}

impl<I: Downstream> Downstream for crate::prefixed::Prefixed<I> {
    fn reset_on_close(&self) {
        self.get_ref().reset_on_close()
    }

    fn take_error(&self) -> Option<io::Error> {
        self.get_ref().take_error()
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
    let upstream = match shared.upstream.connector().dial(dst).await {
        Ok(s) => s.into_inner(),
        Err(e) => {
            shared.metrics.connect_errors.inc();
            tracing::debug!(%dst, error = %e, "opaque upstream failed, resetting client");
            downstream.reset_on_close();
            return Ok(());
        }
    };
    let idle = crate::config::sidecar(&shared.config)
        .tcp_idle_timeout
        .get();
    copy(shared, direction, downstream, upstream, idle).await
}

/// Copies both ways between a client and an upstream connection already open (the one
/// detection opened to let the server speak first, or a tunnel's dialled target), with the same
/// idle and half-close rules as [`proxy`].
pub async fn relay<D: Downstream, U: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    direction: Direction,
    downstream: D,
    upstream: U,
) -> io::Result<()> {
    let idle = crate::config::sidecar(&shared.config)
        .tcp_idle_timeout
        .get();
    copy(shared, direction, downstream, upstream, idle).await
}

/// Copies both ways until both sides are done, or until no byte has moved either way for
/// `idle` (opaque TCP, tunnels, upgraded connections): then both are closed.
pub async fn copy<A, B>(
    shared: &Shared,
    direction: Direction,
    downstream: A,
    mut upstream: B,
    idle: Duration,
) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity::new(false);
    let mut downstream = Watched::new(downstream, activity.clone());
    let copied = tokio::select! {
        copied = tokio::io::copy_bidirectional_with_sizes(
            &mut downstream,
            &mut upstream,
            COPY_BUFFER,
            COPY_BUFFER,
        ) => copied?,
        _ = activity.expired(idle, None) => {
            shared.metrics.idle_timeouts.inc();
            tracing::debug!(?idle, "closing an idle connection");
            return Ok(());
        }
    };
    let (from_client, to_client) = copied;
    let bytes = shared.metrics.bytes(direction);
    bytes.received.inc_by(from_client);
    bytes.sent.inc_by(to_client);
    Ok(())
}
