//! A client that half-closes keeps its answer; a client that is gone cancels its request.
//!
//! On an HTTP/1 connection a read EOF means one of two things that TCP cannot tell apart: the
//! client shut its write side after sending the request (`shutdown(SHUT_WR)`, as `nc -N` and
//! some batch clients do) and still waits for the response, or it closed the socket and left.
//! hyper offers a choice of one: with `half_close(true)` it never reads while a request is in
//! flight, so a client that resets its connection while the upstream stalls is never noticed
//! (the upstream request and its span live until the upstream answers, maybe forever); with
//! `half_close(false)` it fails the request on the first EOF, so half-closing clients lose
//! their response.
//!
//! [`HalfClose`] sits between the socket and hyper (run with `half_close(false)`): a read EOF
//! while a request is in flight whose body has been read completely is hidden from hyper until
//! that request's response has gone out, so the half-closed client gets its answer; any other
//! EOF (an idle connection, a request body cut short) is shown at once.
//!
//! A closed socket and a half-closed one differ in one way only: new data sent to a socket
//! its owner closed is answered with a reset. So when it hides an EOF before any byte of the
//! response was written, the wrapper sends the first byte of the response ahead: every
//! HTTP/1 response (a status line, or an interim `1xx`) starts with `H`, and the byte it owes
//! is dropped from the start of hyper's first write. A half-closed client just receives its
//! response in two pieces; a client that is gone answers with a reset. The wrapper then
//! watches the socket's pending error, and a reset reaches hyper as a read error: hyper drops
//! the request, the upstream request is cancelled and the span ends as
//! `downstream_cancelled`. A reset that arrives before any EOF is a read error hyper sees
//! directly.
//!
//! What remains undecidable: a client that leaves after part of the response was written,
//! while the upstream stalls mid-body: no byte can be sent ahead then, so its request ends
//! when the next bytes of the body are written to it and fail.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::tcp::Downstream;

/// How often a hidden EOF's socket is checked for a reset. A check is one `getsockopt`, and
/// only connections whose client half-closed during a request pay it; a quarter second is
/// well below any client timeout a cancellation would be measured against.
const PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// The first byte of every HTTP/1 response: `HTTP/1.x` of a status line.
const STATUS_LINE_START: u8 = b'H';

/// The requests of one connection, as the EOF decision needs them.
#[derive(Debug, Default)]
pub struct InFlight {
    /// Requests whose response has not ended.
    requests: AtomicUsize,
    /// A byte of the current request's response has been written.
    responding: AtomicBool,
    /// Requests whose body is still being read from the client.
    bodies: AtomicUsize,
    /// The reader parked on a hidden EOF, woken when the last request ends.
    reader: Mutex<Option<Waker>>,
}

impl InFlight {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Marks a request in flight until the guard drops (when its response body ends).
    pub fn request(self: &Arc<Self>) -> RequestGuard {
        self.requests.fetch_add(1, Ordering::AcqRel);
        self.responding.store(false, Ordering::Release);
        RequestGuard(self.clone())
    }

    /// Marks a request body as still being read until the last clone drops.
    pub fn body(self: &Arc<Self>) -> BodyOpen {
        self.bodies.fetch_add(1, Ordering::AcqRel);
        BodyOpen {
            _token: Arc::new(BodyToken(self.clone())),
        }
    }

    /// No request waits for its response and no request body for its bytes.
    pub fn is_idle(&self) -> bool {
        self.requests.load(Ordering::Acquire) == 0 && self.bodies.load(Ordering::Acquire) == 0
    }

    /// An EOF now is a half-close to hide: a request waits for its response and no request
    /// body waits for bytes.
    fn hides_eof(&self) -> bool {
        self.requests.load(Ordering::Acquire) > 0 && self.bodies.load(Ordering::Acquire) == 0
    }

    fn wake_reader(&self) {
        let waker = self.reader.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// A request in flight; see [`InFlight::request`].
#[derive(Debug)]
pub struct RequestGuard(Arc<InFlight>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if self.0.requests.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.wake_reader();
        }
    }
}

/// A request body not yet read to its end; carried in the request's extensions to the body
/// that streams it (cloneable, as extensions must be: the clones share one mark).
#[derive(Clone, Debug)]
pub struct BodyOpen {
    _token: Arc<BodyToken>,
}

#[derive(Debug)]
struct BodyToken(Arc<InFlight>);

impl Drop for BodyToken {
    fn drop(&mut self) {
        self.0.bodies.fetch_sub(1, Ordering::AcqRel);
        self.0.wake_reader();
    }
}

pin_project_lite::pin_project! {
    /// The downstream socket as hyper reads it; see the module doc.
    #[derive(Debug)]
    pub struct HalfClose<I> {
        #[pin]
        inner: I,
        in_flight: Arc<InFlight>,
        eof: bool,
        probe: Option<Pin<Box<Sleep>>>,
        ahead: Ahead,
        // The last write did not take all it was given: hyper may hold unwritten bytes.
        write_blocked: bool,
    }
}

/// The response byte sent ahead of hyper (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ahead {
    /// Not sent (yet).
    No,
    /// Sent: dropped from the start of hyper's next write.
    Owed,
    /// Sent and accounted for: never again on this connection.
    Done,
}

impl<I> HalfClose<I> {
    pub fn new(inner: I, in_flight: Arc<InFlight>) -> Self {
        Self {
            inner,
            in_flight,
            eof: false,
            probe: None,
            ahead: Ahead::No,
            write_blocked: false,
        }
    }
}

impl<I: Downstream> AsyncRead for HalfClose<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut this = self.project();
        if !*this.eof {
            let before = buf.filled().len();
            let want = buf.remaining() > 0;
            std::task::ready!(this.inner.as_mut().poll_read(cx, buf))?;
            if buf.filled().len() > before || !want {
                return Poll::Ready(Ok(()));
            }
            *this.eof = true;
        }
        if !this.in_flight.hides_eof() {
            *this.probe = None;
            return Poll::Ready(Ok(()));
        }
        // Parked: woken when the last request ends or a body opens, or by the probe timer.
        *this
            .in_flight
            .reader
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(cx.waker().clone());
        if !this.in_flight.hides_eof() {
            return Poll::Ready(Ok(()));
        }
        if *this.ahead == Ahead::No
            && !*this.write_blocked
            && !this.in_flight.responding.load(Ordering::Acquire)
        {
            // Nothing of the response is written or buffered: the byte can go ahead. A
            // write that cannot go now is simply not tried again.
            *this.ahead = Ahead::Done;
            if let Poll::Ready(Ok(1)) = this.inner.as_mut().poll_write(cx, &[STATUS_LINE_START]) {
                *this.ahead = Ahead::Owed;
                let _ = this.inner.as_mut().poll_flush(cx);
            }
        }
        let probe = this
            .probe
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(PROBE_INTERVAL)));
        loop {
            if let Some(e) = this.inner.take_error() {
                return Poll::Ready(Err(e));
            }
            if probe.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let next = tokio::time::Instant::now() + PROBE_INTERVAL;
            probe.as_mut().reset(next);
        }
    }
}

impl<I: AsyncWrite> AsyncWrite for HalfClose<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        if buf.is_empty() {
            return this.inner.poll_write(cx, buf);
        }
        this.in_flight.responding.store(true, Ordering::Release);
        let mut skip = 0;
        if *this.ahead == Ahead::Owed {
            if buf[0] != STATUS_LINE_START {
                // Cannot happen with hyper's HTTP/1 encoder; refusing beats a garbled answer.
                return Poll::Ready(Err(io::Error::other(
                    "response does not start with the byte sent ahead",
                )));
            }
            *this.ahead = Ahead::Done;
            skip = 1;
            if buf.len() == 1 {
                return Poll::Ready(Ok(1));
            }
        }
        let polled = this.inner.poll_write(cx, &buf[skip..]);
        *this.write_blocked = !matches!(polled, Poll::Ready(Ok(n)) if n == buf.len() - skip);
        match polled {
            Poll::Ready(Ok(n)) => Poll::Ready(Ok(n + skip)),
            // The owed byte was consumed from `buf` already: report it written.
            Poll::Pending if skip == 1 => Poll::Ready(Ok(1)),
            other => other,
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.ahead == Ahead::Owed {
            // Rare (once per connection at most): the first non-empty buffer alone.
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &b[..]);
            return self.poll_write(cx, first);
        }
        let this = self.project();
        let want: usize = bufs.iter().map(|b| b.len()).sum();
        if want > 0 {
            this.in_flight.responding.store(true, Ordering::Release);
        }
        let polled = this.inner.poll_write_vectored(cx, bufs);
        *this.write_blocked = !matches!(polled, Poll::Ready(Ok(n)) if n == want);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

pin_project_lite::pin_project! {
    /// A response body that holds its request's [`RequestGuard`] until it ends or is dropped.
    #[derive(Debug)]
    pub struct Held<B> {
        #[pin]
        inner: B,
        guard: Option<RequestGuard>,
    }
}

impl<B> Held<B> {
    pub fn new(inner: B, guard: RequestGuard) -> Self {
        Self {
            inner,
            guard: Some(guard),
        }
    }
}

impl<B: Body> Body for Held<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.guard.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn read_eof<I: Downstream>(io: &mut HalfClose<I>) -> bool {
        let mut buf = [0u8; 16];
        matches!(
            tokio::time::timeout(Duration::from_millis(50), io.read(&mut buf)).await,
            Ok(Ok(0))
        )
    }

    #[tokio::test]
    async fn an_eof_is_hidden_only_while_a_complete_request_waits() {
        let (client, server) = tokio::io::duplex(64);
        let in_flight = InFlight::new();
        let mut io = HalfClose::new(server, in_flight.clone());
        drop(client);
        // A request whose body is still being read: the EOF is shown (the body is cut short).
        let req = in_flight.request();
        let body = in_flight.body();
        assert!(read_eof(&mut io).await);
        // Its body read completely: the EOF is hidden until the response ends.
        drop(body);
        assert!(!read_eof(&mut io).await);
        let mut buf = [0u8; 16];
        let read = io.read(&mut buf);
        tokio::pin!(read);
        assert!(futures_util::poll!(read.as_mut()).is_pending());
        drop(req);
        assert_eq!(read.await.unwrap(), 0, "woken by the end of the request");
        // Nothing in flight: shown at once.
        assert!(read_eof(&mut io).await);
    }

    #[tokio::test]
    async fn data_and_writes_pass_through() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut io = HalfClose::new(server, InFlight::new());
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        io.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        io.write_all(b"pong").await.unwrap();
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
    }

    #[tokio::test]
    async fn the_byte_sent_ahead_is_not_sent_twice() {
        let (mut client, server) = tokio::io::duplex(64);
        let in_flight = InFlight::new();
        let req = in_flight.request();
        let mut io = HalfClose::new(server, in_flight);
        client.shutdown().await.unwrap();
        assert!(!read_eof(&mut io).await, "hidden");
        let mut first = [0u8; 1];
        client.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"H", "sent ahead");
        io.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        drop(req);
        drop(io);
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"TTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
    }

    #[tokio::test]
    async fn a_reset_under_a_hidden_eof_reaches_the_reader() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let in_flight = InFlight::new();
        let _req = in_flight.request();
        let mut io = HalfClose::new(server, in_flight);
        client.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(!read_eof(&mut io).await, "a half-close is hidden");
        // The client goes for good, with a plain close: the byte sent ahead draws a reset.
        drop(client);
        let mut buf = [0u8; 16];
        let got = tokio::time::timeout(Duration::from_secs(5), io.read(&mut buf))
            .await
            .expect("the reset is noticed");
        assert!(got.is_err(), "{got:?}");
    }
}
