//! The cap on upstream connections per destination address (Envoy's circuit-breaker
//! `max_connections`): a destination that stalls cannot make the proxy open connections to it
//! without bound; beyond the cap a request gets 503 at once, as from Envoy's overflow.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::{Connected, Connection};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Open upstream connections by destination; entries leave the map when their count is zero,
/// so the map is bounded by the destinations connected to right now.
#[derive(Debug, Default)]
pub struct DestCounts {
    open: Mutex<HashMap<SocketAddr, u32>>,
}

impl DestCounts {
    /// Touched briefly and never across an await; a panic elsewhere must not poison it.
    fn lock(&self) -> MutexGuard<'_, HashMap<SocketAddr, u32>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot towards `dst`, or `None` when `max` are open already.
    pub fn acquire(self: &Arc<Self>, dst: SocketAddr, max: u32) -> Option<DestSlot> {
        let mut open = self.lock();
        let n = open.entry(dst).or_insert(0);
        if *n >= max {
            if *n == 0 {
                open.remove(&dst);
            }
            return None;
        }
        *n += 1;
        Some(DestSlot {
            counts: self.clone(),
            dst,
        })
    }

    /// Connections open to `dst` now.
    pub fn open(&self, dst: SocketAddr) -> u32 {
        self.lock().get(&dst).copied().unwrap_or(0)
    }
}

/// One counted upstream connection; dropping it frees the slot.
#[derive(Debug)]
pub struct DestSlot {
    counts: Arc<DestCounts>,
    dst: SocketAddr,
}

impl Drop for DestSlot {
    fn drop(&mut self) {
        let mut open = self.counts.lock();
        if let Some(n) = open.get_mut(&self.dst) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.dst);
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// An upstream stream that holds its destination slot for as long as it lives.
    #[derive(Debug)]
    pub struct Counted {
        #[pin]
        stream: TcpStream,
        slot: DestSlot,
    }
}

impl Counted {
    pub fn new(stream: TcpStream, slot: DestSlot) -> Self {
        Self { stream, slot }
    }
}

impl Connection for Counted {
    fn connected(&self) -> Connected {
        self.stream.connected()
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().stream.poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().stream.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().stream.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().stream.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().stream.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_per_destination_and_freed_on_drop() {
        let counts = Arc::new(DestCounts::default());
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let one = counts.acquire(a, 2).unwrap();
        let two = counts.acquire(a, 2).unwrap();
        assert!(counts.acquire(a, 2).is_none());
        // Another destination has its own budget.
        let other = counts.acquire(b, 2).unwrap();
        drop(one);
        assert_eq!(counts.open(a), 1);
        let three = counts.acquire(a, 2).unwrap();
        drop((two, three, other));
        assert!(counts.lock().is_empty());
    }
}
