//! Idle HTTP/1 connections parked outside hyper.
//!
//! hyper gives every HTTP/1 connection an 8 KiB write buffer when it starts and reserves an
//! 8 KiB read buffer before every read, so also while the connection waits for its next
//! request: 16 of the ~19 KiB an idle keep-alive connection costs the sidecar, and the
//! builder cannot shrink either. Apps keep pooled connections idle for seconds to minutes,
//! so a connection that has been quiet for [`PARK_AFTER`] with nothing in flight and
//! hyper's last flush complete is taken back from hyper (socket, unread bytes, service),
//! waits for the client's next bytes holding no buffer, and is served by a new hyper
//! connection from them. A connection in use (requests milliseconds apart) never parks; an
//! idle one costs one read into the stack and a new hyper connection when it wakes.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::half_close::InFlight;

/// Quiet time before a connection is parked. Longer than the gaps between the requests of a
/// client that uses its connection (so it keeps hyper's buffers), short enough that an idle
/// pooled connection gives them back within a second. The check runs every `PARK_AFTER`, so a
/// connection parks after between one and two of them.
pub const PARK_AFTER: Duration = Duration::from_millis(500);

/// The client's first bytes after a park are read into the stack, not into a buffer held
/// while waiting; a larger first message is read on by hyper.
const WAKE_READ: usize = 2048;

/// What the parking check needs to know of the connection's I/O while hyper owns it.
#[derive(Debug)]
pub struct Marks {
    /// Reads and writes, to see the connection stay quiet (flushes are not counted: hyper
    /// flushes each time it is polled).
    ops: AtomicU64,
    /// hyper's last write-side call was a completed flush: its write buffer is empty.
    flushed: AtomicBool,
}

impl Marks {
    fn op(&self) {
        self.ops.fetch_add(1, Ordering::Relaxed);
    }
}

/// The connection's stream as hyper sees it: bytes taken back from hyper at a park (or
/// read while parked) are replayed first, and I/O is counted for [`quiet`].
#[derive(Debug)]
pub struct Parkable<I> {
    inner: I,
    replay: Bytes,
    marks: Arc<Marks>,
}

impl<I> Parkable<I> {
    pub fn new(inner: I) -> Self {
        Self {
            inner,
            replay: Bytes::new(),
            marks: Arc::new(Marks {
                ops: AtomicU64::new(0),
                flushed: AtomicBool::new(true),
            }),
        }
    }

    pub fn marks(&self) -> Arc<Marks> {
        self.marks.clone()
    }

    /// Puts bytes hyper had read but not used back in front of the stream. They are copied
    /// out: `unread` is a view of hyper's whole read buffer, which it would keep alive.
    pub fn replay(&mut self, unread: Bytes) {
        if unread.is_empty() {
            return;
        }
        if self.replay.is_empty() {
            self.replay = Bytes::copy_from_slice(&unread);
        } else {
            // hyper read these before what is still queued here.
            let mut joined = Vec::with_capacity(unread.len() + self.replay.len());
            joined.extend_from_slice(&unread);
            joined.extend_from_slice(&self.replay);
            self.replay = joined.into();
        }
    }

    pub fn has_replay(&self) -> bool {
        !self.replay.is_empty()
    }
}

impl<I: AsyncRead + Unpin> Parkable<I> {
    /// Waits for the client's next bytes holding no buffer; `false` when the client closed
    /// its side or the connection failed (a parked connection has nothing in flight, so
    /// either ends it, as it would end an idle connection in hyper).
    pub async fn wait_for_client(&mut self) -> bool {
        poll_fn(|cx| {
            let mut stack = [0u8; WAKE_READ];
            let mut buf = ReadBuf::new(&mut stack);
            match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(_)) => Poll::Ready(false),
                Poll::Ready(Ok(())) if buf.filled().is_empty() => Poll::Ready(false),
                Poll::Ready(Ok(())) => {
                    self.replay = Bytes::copy_from_slice(buf.filled());
                    Poll::Ready(true)
                }
            }
        })
        .await
    }
}

/// The parking check, for [`crate::idle::Activity::expired_or_quiet`] to call every
/// period: `true` once the connection has had no I/O since the previous call (or since this
/// one was made), nothing is in flight and hyper's write buffer is flushed, so it can be taken
/// from hyper without losing a byte (unread bytes come back with it).
pub fn quiet<'a>(marks: &'a Marks, in_flight: &'a InFlight) -> impl FnMut() -> bool + 'a {
    let mut seen = marks.ops.load(Ordering::Relaxed);
    move || {
        let ops = marks.ops.load(Ordering::Relaxed);
        let quiet = ops == seen && marks.flushed.load(Ordering::Relaxed) && in_flight.is_idle();
        seen = ops;
        quiet
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Parkable<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.replay.is_empty() {
            let n = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay[..n]);
            this.replay.advance(n);
            if this.replay.is_empty() {
                this.replay = Bytes::new();
            }
            this.marks.op();
            return Poll::Ready(Ok(()));
        }
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if polled.is_ready() {
            this.marks.op();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Parkable<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.marks.flushed.store(false, Ordering::Relaxed);
        this.marks.op();
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.marks.flushed.store(false, Ordering::Relaxed);
        this.marks.op();
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        // Not an operation: hyper flushes each time it is polled, moving nothing.
        if matches!(polled, Poll::Ready(Ok(()))) {
            this.marks.flushed.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.marks.flushed.store(false, Ordering::Relaxed);
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}
