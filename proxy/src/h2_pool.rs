//! HTTP/2 upstream connections: a few multiplexed connections per destination socket address,
//! new streams on the least loaded.
//!
//! Keyed by the destination rather than the request URI, so requests keep the client's
//! `:authority` (virtual hosts, gRPC routing) while sharing the connections the proxy dialled.
//! One connection per destination would pin all of a pod's gRPC traffic to the one backend
//! kube-proxy picked for it, so a destination grows to `spec.sidecar.http2ConnectionsPerDestination`
//! connections as its streams grow: a new connection opens only when every open one carries
//! its stream target ([`STREAM_TARGET`], or less if the peer's `MAX_CONCURRENT_STREAMS` is
//! lower), so a quiet destination keeps one.
//!
//! Streams are counted per connection by an [`InFlight`] guard held until the response body
//! ends or is dropped. When every connection is at the peer's `MAX_CONCURRENT_STREAMS` and no
//! more may be opened, a request waits for a stream to end instead of being queued inside the
//! connection (hyper's HTTP/2 sender queues without bound); at most [`MAX_PENDING`] wait per
//! destination, beyond that a request fails at once with [`ConnectError::Limit`] (503).
//!
//! Concurrent first requests to a destination share one connect; a closed connection is
//! replaced on the next request; connections unused for the idle timeout are let go (their
//! in-flight streams still finish). Every connection is dialled through the [`Connector`], so
//! the per-destination connection cap counts them all.

use std::collections::HashMap;
use std::fmt;
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, FutureExt, Shared};
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::client::conn::http2::{Builder, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use crate::connect::Connector;
use crate::error::ConnectError;

/// Streams one connection carries before another is opened beside it: RFC 9113 asks servers
/// to allow at least 100 concurrent streams, and past that multiplexing one connection gains
/// nothing while spreading gives a per-connection balancer more to spread. When every
/// connection carries this many and no more may be opened, streams still go to the least
/// loaded connection, up to the peer's own limit.
pub const STREAM_TARGET: u32 = 100;

/// Requests that may wait per destination when every connection is at the peer's
/// `MAX_CONCURRENT_STREAMS`: Envoy's default `max_pending_requests` (1024). A bound, so a
/// stalled upstream cannot make the proxy hold requests without limit.
pub const MAX_PENDING: u32 = 1024;

/// Why a request could not be sent over HTTP/2; cloneable because one failed connect answers
/// every request that was waiting on it.
#[derive(Clone, Debug, thiserror::Error)]
pub enum H2Error {
    #[error(transparent)]
    Connect(Arc<ConnectError>),
    #[error("upstream HTTP/2 handshake failed: {0}")]
    Handshake(Arc<hyper::Error>),
    #[error("upstream HTTP/2 request failed: {0}")]
    Request(Arc<hyper::Error>),
}

type Connecting<B> = Shared<BoxFuture<'static, Result<SendRequest<B>, H2Error>>>;

/// What the connections of one destination share outside the map lock: requests waiting for
/// room, woken when a stream ends or the set of connections changes.
#[derive(Debug, Default)]
struct Room {
    notify: Notify,
    waiting: AtomicU32,
}

/// One connection's load, shared by its in-flight guards and the task driving it.
#[derive(Debug)]
struct Load {
    in_flight: AtomicU32,
    /// The peer's `SETTINGS_MAX_CONCURRENT_STREAMS` as the connection last saw it.
    peer_max: AtomicU32,
    room: Arc<Room>,
}

impl Load {
    fn new(room: Arc<Room>) -> Self {
        Self {
            in_flight: AtomicU32::new(0),
            // hyper's assumption until the peer's SETTINGS arrive (`open` waits for them).
            peer_max: AtomicU32::new(STREAM_TARGET),
            room,
        }
    }

    fn get(&self) -> (u32, u32) {
        (
            self.in_flight.load(Ordering::SeqCst),
            self.peer_max.load(Ordering::Relaxed),
        )
    }
}

/// A stream counted against its connection until the response body ends or is dropped (hold
/// it beside the body); then a request waiting for room is woken.
#[derive(Debug)]
pub struct InFlight {
    load: Arc<Load>,
}

impl InFlight {
    /// Counts a stream on `load`.
    fn start(load: &Arc<Load>) -> Self {
        load.in_flight.fetch_add(1, Ordering::SeqCst);
        Self { load: load.clone() }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.load.in_flight.fetch_sub(1, Ordering::SeqCst);
        // SeqCst on both sides: a waiter registers before it looks at the loads, so either it
        // sees this stream gone or this sees it waiting.
        if self.load.room.waiting.load(Ordering::SeqCst) > 0 {
            self.load.room.notify.notify_one();
        }
    }
}

struct Conn<B> {
    sender: SendRequest<B>,
    /// Tells this connection from a later one to the same destination.
    id: u64,
    load: Arc<Load>,
    last_used: Instant,
}

/// A destination's connections, and the connect that will add one.
struct Dest<B> {
    conns: Vec<Conn<B>>,
    connecting: Option<(u64, Arc<Load>, Connecting<B>)>,
    room: Arc<Room>,
}

impl<B> Dest<B> {
    fn new() -> Self {
        Self {
            conns: Vec::new(),
            connecting: None,
            room: Arc::default(),
        }
    }
}

/// Where the next stream to a destination goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Choice {
    /// On the ready connection at this index.
    Use(usize),
    /// Nowhere yet: open another connection.
    Open,
    /// Nowhere yet: a connection is being opened.
    AwaitConnect,
    /// Nowhere: every connection is at the peer's limit and no more may be opened.
    Wait,
}

/// Picks the least loaded connection below the peer's limit; below [`STREAM_TARGET`] it is
/// taken at once, otherwise another connection is opened while `cap` allows (asked only then,
/// as reading it takes the config's lock).
///
/// `loads` are (in-flight streams, peer's `MAX_CONCURRENT_STREAMS`) of the ready connections.
fn choose(
    loads: impl Iterator<Item = (u32, u32)>,
    connecting: bool,
    cap: impl FnOnce() -> usize,
) -> Choice {
    let mut ready = 0;
    let mut best: Option<(usize, u32, u32)> = None;
    for (i, (n, max)) in loads.enumerate() {
        ready += 1;
        if n < max && best.is_none_or(|(_, b, _)| n < b) {
            best = Some((i, n, max));
        }
    }
    match best {
        Some((i, n, max)) if n < max.min(STREAM_TARGET) => Choice::Use(i),
        _ if !connecting && ready < cap() => Choice::Open,
        Some((i, ..)) => Choice::Use(i),
        None if connecting => Choice::AwaitConnect,
        None => Choice::Wait,
    }
}

/// The next step of a request towards a stream.
enum Step<B> {
    Ready(u64, SendRequest<B>, InFlight),
    Await(u64, Connecting<B>),
    Wait(Arc<Room>),
}

struct Inner<B> {
    connector: Connector,
    idle_timeout: Duration,
    slots: Mutex<HashMap<SocketAddr, Dest<B>>>,
    next_id: AtomicU64,
    sweeper: Once,
    max_pending: u32,
}

/// The HTTP/2 connection cache, generic over the request body (the proxy's is
/// [`RequestBody`](crate::body::RequestBody)); cheap to clone.
pub struct H2Pool<B> {
    inner: Arc<Inner<B>>,
}

impl<B> Clone for H2Pool<B> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<B> fmt::Debug for H2Pool<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("H2Pool")
            .field("destinations", &self.inner.lock().len())
            .field("idle_timeout", &self.inner.idle_timeout)
            .finish()
    }
}

impl<B> Inner<B> {
    /// The map is only touched briefly and never across an await; a panic elsewhere must not
    /// take the pool down with it.
    fn lock(&self) -> MutexGuard<'_, HashMap<SocketAddr, Dest<B>>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sweep(&self, now: Instant) {
        self.lock().retain(|_, dest| {
            let before = dest.conns.len();
            dest.conns.retain(|c| {
                !c.sender.is_closed()
                    && (c.load.in_flight.load(Ordering::SeqCst) > 0
                        || now.saturating_duration_since(c.last_used) < self.idle_timeout)
            });
            if dest.conns.len() != before {
                dest.room.notify.notify_waiters();
            }
            !dest.conns.is_empty() || dest.connecting.is_some()
        });
    }
}

impl<B> H2Pool<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub fn new(connector: Connector, idle_timeout: Duration) -> Self {
        Self::with_max_pending(connector, idle_timeout, MAX_PENDING)
    }

    fn with_max_pending(connector: Connector, idle_timeout: Duration, max_pending: u32) -> Self {
        Self {
            inner: Arc::new(Inner {
                connector,
                idle_timeout,
                slots: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                sweeper: Once::new(),
                max_pending,
            }),
        }
    }

    /// Sends `req` to `dst` over the least loaded of the destination's connections; the
    /// [`InFlight`] guard must be held as long as the response body. A request the connection
    /// refused before sending it (connection just closed) is retried once on another.
    pub async fn send(
        &self,
        dst: SocketAddr,
        mut req: Request<B>,
    ) -> Result<(Response<Incoming>, InFlight), H2Error> {
        let mut retried = false;
        loop {
            let (id, mut sender, held) = self.sender(dst).await?;
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, held)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if !retried => {
                        drop(held);
                        self.evict(dst, id);
                        req = unsent;
                        retried = true;
                    }
                    _ => return Err(H2Error::Request(Arc::new(e.into_error()))),
                },
            }
        }
    }

    /// Number of destinations with a connection or a connect in progress.
    pub fn len(&self) -> usize {
        self.inner.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ready connections to `dst` now.
    pub fn connections(&self, dst: SocketAddr) -> usize {
        self.inner.lock().get(&dst).map_or(0, |d| d.conns.len())
    }

    /// A stream on one of `dst`'s connections: at once, after a (possibly shared) connect, or
    /// after waiting for room.
    async fn sender(&self, dst: SocketAddr) -> Result<(u64, SendRequest<B>, InFlight), H2Error> {
        // After a connect of this request's failed, it waits for room on the connections
        // there are rather than dialling again and again.
        let mut may_open = true;
        loop {
            let step = match self.step(dst, may_open) {
                Step::Wait(room) => {
                    let _waiting = Waiting::register(&room, self.inner.max_pending)
                        .ok_or_else(|| H2Error::Connect(Arc::new(ConnectError::Limit(dst))))?;
                    let notified = room.notify.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    // A stream that ended between the choice and the registration woke
                    // nobody: look again now that a wake-up cannot be missed.
                    match self.step(dst, may_open) {
                        Step::Wait(_) => {
                            notified.await;
                            continue;
                        }
                        other => other,
                    }
                }
                other => other,
            };
            match step {
                Step::Ready(id, sender, held) => return Ok((id, sender, held)),
                Step::Await(id, connecting) => {
                    let result = connecting.clone().await;
                    let failed = result.as_ref().err().cloned();
                    let connected = self.record(dst, id, &connecting, result);
                    if let Some(e) = failed {
                        if connected == 0 {
                            return Err(e);
                        }
                        may_open = false;
                    }
                }
                Step::Wait(_) => unreachable!("waits are handled above"),
            }
        }
    }

    /// Under the map lock: a stream on the least loaded connection, or what to wait for.
    fn step(&self, dst: SocketAddr, may_open: bool) -> Step<B> {
        let mut slots = self.inner.lock();
        let dest = slots.entry(dst).or_insert_with(Dest::new);
        dest.conns.retain(|c| !c.sender.is_closed());
        // With no connection left there is nothing to wait for: dial (a failure is final).
        let may_open = may_open || dest.conns.is_empty();
        let cap = || {
            if may_open {
                self.inner
                    .connector
                    .limits()
                    .http2_connections_per_destination as usize
            } else {
                0
            }
        };
        let choice = choose(
            dest.conns.iter().map(|c| c.load.get()),
            dest.connecting.is_some(),
            cap,
        );
        match choice {
            Choice::Use(i) => {
                let conn = &mut dest.conns[i];
                conn.last_used = Instant::now();
                let held = InFlight::start(&conn.load);
                Step::Ready(conn.id, conn.sender.clone(), held)
            }
            Choice::Open => {
                let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
                let load = Arc::new(Load::new(dest.room.clone()));
                let connecting = open(self.inner.connector.clone(), dst, load.clone())
                    .boxed()
                    .shared();
                dest.connecting = Some((id, load, connecting.clone()));
                // The connect runs on its own, so a request that goes on to use an existing
                // connection does not leave it unpolled.
                let pool = Arc::downgrade(&self.inner);
                let driven = connecting.clone();
                tokio::spawn(async move {
                    let result = driven.clone().await;
                    if let Some(inner) = pool.upgrade() {
                        H2Pool { inner }.record(dst, id, &driven, result);
                    }
                });
                Step::Await(id, connecting)
            }
            Choice::AwaitConnect => match &dest.connecting {
                Some((id, _, c)) => Step::Await(*id, c.clone()),
                None => unreachable!("chosen only while connecting"),
            },
            Choice::Wait => Step::Wait(dest.room.clone()),
        }
    }

    /// Records the outcome of connect `id` (if nobody has yet) and wakes the requests waiting
    /// for room; returns the destination's ready connections.
    fn record(
        &self,
        dst: SocketAddr,
        id: u64,
        connecting: &Connecting<B>,
        result: Result<SendRequest<B>, H2Error>,
    ) -> usize {
        let mut slots = self.inner.lock();
        let Some(dest) = slots.get_mut(&dst) else {
            return 0;
        };
        let ours = matches!(&dest.connecting, Some((_, _, c)) if c.ptr_eq(connecting));
        if ours {
            let (_, load, _) = dest.connecting.take().expect("ours");
            if let Ok(sender) = result {
                dest.conns.push(Conn {
                    sender,
                    id,
                    load,
                    last_used: Instant::now(),
                });
            }
            dest.room.notify.notify_waiters();
        }
        let ready = dest.conns.len();
        if ready == 0 && dest.connecting.is_none() {
            slots.remove(&dst);
        }
        drop(slots);
        if ours && ready > 0 {
            self.start_sweeper();
        }
        ready
    }

    /// Forgets connection `id` to `dst`.
    fn evict(&self, dst: SocketAddr, id: u64) {
        let mut slots = self.inner.lock();
        if let Some(dest) = slots.get_mut(&dst) {
            dest.conns.retain(|c| c.id != id);
        }
    }

    /// Drops idle and closed connections periodically; the task ends with the pool. Started on
    /// first use, where a runtime is known to exist.
    fn start_sweeper(&self) {
        self.inner.sweeper.call_once(|| {
            let weak: Weak<Inner<B>> = Arc::downgrade(&self.inner);
            let period = (self.inner.idle_timeout / 2).max(Duration::from_millis(10));
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(inner) = weak.upgrade() else { return };
                    inner.sweep(Instant::now());
                }
            });
        });
    }
}

/// A request counted among those waiting for room, until dropped.
struct Waiting<'a> {
    room: &'a Room,
}

impl<'a> Waiting<'a> {
    /// `None` when `max` wait already.
    fn register(room: &'a Room, max: u32) -> Option<Self> {
        if room.waiting.fetch_add(1, Ordering::SeqCst) >= max {
            room.waiting.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Self { room })
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.room.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

pin_project_lite::pin_project! {
    /// An upstream stream that reads the peer's stream limit from its first bytes: the
    /// SETTINGS frame a server must send first (RFC 9113 §3.4). hyper applies it on a task of
    /// its own and tells nobody, and without it a burst of first requests would all be put on
    /// the first connection by hyper's guess of 100.
    struct FirstRead<T> {
        #[pin]
        io: T,
        first: Option<(Arc<Load>, tokio::sync::oneshot::Sender<()>)>,
    }
}

/// `SETTINGS_MAX_CONCURRENT_STREAMS` in `bytes` if they open with a SETTINGS frame that sets
/// it (the last value wins, as the frame's entries apply in order).
fn preface_max_streams(bytes: &[u8]) -> Option<u32> {
    const SETTINGS: u8 = 0x4;
    const ACK: u8 = 0x1;
    const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    let (head, rest) = bytes.split_first_chunk::<9>()?;
    if head[3] != SETTINGS || head[4] & ACK != 0 {
        return None;
    }
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let payload = &rest[..len.min(rest.len())];
    payload
        .chunks_exact(6)
        .rev()
        .find(|e| u16::from_be_bytes([e[0], e[1]]) == MAX_CONCURRENT_STREAMS)
        .map(|e| u32::from_be_bytes([e[2], e[3], e[4], e[5]]))
}

impl<T: AsyncRead> AsyncRead for FirstRead<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.io.poll_read(cx, buf);
        if this.first.is_some() && buf.filled().len() > before {
            if let Some((load, known)) = this.first.take() {
                if let Some(max) = preface_max_streams(&buf.filled()[before..]) {
                    load.peer_max.store(max, Ordering::Relaxed);
                }
                let _ = known.send(());
            }
        }
        polled
    }
}

impl<T: AsyncWrite> AsyncWrite for FirstRead<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, b)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

/// Dials `dst` and runs the HTTP/2 (prior knowledge) handshake; the connection is driven by
/// its own task, which publishes the peer's stream limit into `load` and ends when the server
/// closes the connection or every handle and stream is gone.
///
/// Returns once the peer's SETTINGS have been read (or the connect timeout passed without
/// them), so a burst of first requests is spread by the peer's real limit, not hyper's guess.
async fn open<B>(
    connector: Connector,
    dst: SocketAddr,
    load: Arc<Load>,
) -> Result<SendRequest<B>, H2Error>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let io = connector
        .dial(dst)
        .await
        .map_err(|e| H2Error::Connect(Arc::new(e)))?;
    let (known_tx, known) = tokio::sync::oneshot::channel();
    let io = TokioIo::new(FirstRead {
        io: io.into_inner(),
        first: Some((load.clone(), known_tx)),
    });
    let limits = connector.limits();
    let mut builder = Builder::new(TokioExecutor::new());
    // PINGs only while streams are open: that is when a dead peer costs requests, and idle
    // pings would trip servers' ping-abuse limits (grpc-go's enforcement policy). An idle
    // connection to a dead peer is found by the first request's pings, or swept as idle.
    builder
        .timer(TokioTimer::new())
        .initial_max_send_streams(STREAM_TARGET as usize)
        .keep_alive_interval(limits.http2_keepalive_interval.non_zero())
        .keep_alive_timeout(limits.http2_keepalive_timeout.get())
        .keep_alive_while_idle(false);
    let (sender, conn) = builder
        .handshake(io)
        .await
        .map_err(|e| H2Error::Handshake(Arc::new(e)))?;
    tokio::spawn(async move {
        let mut conn = Box::pin(conn);
        // Later changes of the limit, as hyper applied them: read whenever the connection
        // dispatches. Until hyper's value first moves from its initial guess, the preface's
        // (read above) is the better one.
        let mut applied = false;
        let ended = poll_fn(|cx| {
            let polled = conn.as_mut().poll(cx);
            let max = u32::try_from(conn.current_max_send_streams()).unwrap_or(u32::MAX);
            applied |= max != STREAM_TARGET;
            if applied {
                load.peer_max.store(max, Ordering::Relaxed);
            }
            polled
        })
        .await;
        if let Err(e) = ended {
            tracing::debug!(%dst, error = %e, "upstream HTTP/2 connection ended with an error");
        }
        // Its streams are gone and a new connection may take its place.
        load.peer_max.store(0, Ordering::Relaxed);
        load.room.notify.notify_waiters();
    });
    // A peer that never sends its SETTINGS is not waited on forever: the first request then
    // finds it out (PINGs, or the connection's end).
    let _ = tokio::time::timeout(limits.connect_timeout.get(), known).await;
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    use crate::connect::SelfAddrs;
    use tokio::net::TcpListener;

    /// An h2c server counting accepted connections; each connection serves `per_conn`
    /// requests then closes (`None`: never).
    async fn h2_server(per_conn: Option<usize>) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(8);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                        let done_tx = done_tx.clone();
                        async move {
                            let _ = done_tx.try_send(());
                            Ok::<_, std::convert::Infallible>(Response::new(
                                http_body_util::Empty::<bytes::Bytes>::new(),
                            ))
                        }
                    });
                    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                    tokio::pin!(conn);
                    let mut served = 0;
                    loop {
                        tokio::select! {
                            _ = conn.as_mut() => return,
                            Some(()) = done_rx.recv() => {
                                served += 1;
                                if Some(served) == per_conn {
                                    conn.as_mut().graceful_shutdown();
                                    let _ = conn.await;
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    /// An h2c server allowing `max_streams` concurrent streams per connection, whose
    /// responses wait for `release`; counts accepted connections and requests arrived.
    struct Slow {
        addr: SocketAddr,
        accepted: Arc<AtomicUsize>,
        arrived: Arc<AtomicUsize>,
        release: tokio::sync::watch::Sender<bool>,
    }

    async fn slow_server(max_streams: u32) -> Slow {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let arrived = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::watch::channel(false);
        let (count, seen) = (accepted.clone(), arrived.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let (seen, released) = (seen.clone(), released.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                        let mut released = released.clone();
                        seen.fetch_add(1, Ordering::SeqCst);
                        async move {
                            let _ = released.wait_for(|r| *r).await;
                            Ok::<_, std::convert::Infallible>(Response::new(Empty::new()))
                        }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .max_concurrent_streams(max_streams)
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Slow {
            addr,
            accepted,
            arrived,
            release,
        }
    }

    type Empty = http_body_util::Empty<bytes::Bytes>;

    fn pool(idle: Duration) -> H2Pool<Empty> {
        H2Pool::new(
            Connector::new(Arc::new(SelfAddrs::default()), Duration::from_secs(5)),
            idle,
        )
    }

    /// A pool allowing `conns` HTTP/2 connections per destination and `pending` waiters.
    fn capped_pool(conns: u32, pending: u32) -> H2Pool<Empty> {
        sidecar_pool(|s| s.http2_connections_per_destination = conns, pending)
    }

    fn sidecar_pool(edit: impl FnOnce(&mut mesh_config::Sidecar), pending: u32) -> H2Pool<Empty> {
        let mut config = mesh_config::MeshConfig::default();
        edit(&mut config.spec.sidecar);
        let snapshot = crate::config::Snapshot {
            config: Arc::new(config),
            ..crate::config::Snapshot::default_config()
        };
        let connector = Connector::with_config(
            Arc::new(SelfAddrs::default()),
            Duration::from_secs(5),
            crate::config::fixed(snapshot),
        );
        H2Pool::with_max_pending(connector, Duration::from_secs(30), pending)
    }

    fn get() -> Request<Empty> {
        Request::get("http://svc.test/").body(Empty::new()).unwrap()
    }

    /// Polls `cond` until it holds (or fails the test after a generous bound).
    async fn until(what: &str, cond: impl Fn() -> bool) {
        tokio::time::timeout(Duration::from_secs(20), async {
            while !cond() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("never: {what}"));
    }

    fn waiting(pool: &H2Pool<Empty>, dst: SocketAddr) -> u32 {
        pool.inner
            .lock()
            .get(&dst)
            .map_or(0, |d| d.room.waiting.load(Ordering::SeqCst))
    }

    #[test]
    fn the_least_loaded_connection_takes_the_stream() {
        let no_cap = || panic!("the cap is read only to open a connection");
        assert_eq!(
            choose([(5, 100), (2, 100), (3, 100)].into_iter(), false, no_cap),
            Choice::Use(1)
        );
        // A connection at the peer's limit is skipped however few streams it has.
        assert_eq!(
            choose([(2, 2), (7, 100)].into_iter(), false, no_cap),
            Choice::Use(1)
        );
        // Ties go to the first (oldest) connection.
        assert_eq!(
            choose([(1, 100), (1, 100)].into_iter(), true, no_cap),
            Choice::Use(0)
        );
    }

    #[test]
    fn a_connection_opens_only_when_every_one_is_at_its_target() {
        // No connection yet: open one, or wait for the one being opened.
        assert_eq!(choose([].into_iter(), false, || 4), Choice::Open);
        assert_eq!(choose([].into_iter(), true, || 4), Choice::AwaitConnect);
        // Every connection at the peer's limit (2) or the stream target: open another.
        assert_eq!(
            choose([(2, 2), (2, 2)].into_iter(), false, || 4),
            Choice::Open
        );
        let target = STREAM_TARGET;
        assert_eq!(
            choose([(target, 1000)].into_iter(), false, || 4),
            Choice::Open
        );
        // A peer that allows no streams now (MAX_CONCURRENT_STREAMS 0) is full.
        assert_eq!(choose([(0, 0)].into_iter(), false, || 4), Choice::Open);
        // One connection below its target: no new connection.
        assert_eq!(
            choose([(2, 2), (1, 2)].into_iter(), false, || 4),
            Choice::Use(1)
        );
    }

    #[test]
    fn at_the_cap_streams_fill_up_to_the_peer_limit_then_wait() {
        let target = STREAM_TARGET;
        // Past the target but below the peer's limit: the least loaded takes it.
        assert_eq!(
            choose(
                [(target + 5, 1000), (target + 1, 1000)].into_iter(),
                false,
                || 2
            ),
            Choice::Use(1)
        );
        // Also while another connection is being opened.
        assert_eq!(
            choose([(target, 1000)].into_iter(), true, || 4),
            Choice::Use(0)
        );
        // Every connection at the peer's limit: wait for the connect, or for room.
        assert_eq!(
            choose([(2, 2), (2, 2)].into_iter(), true, || 4),
            Choice::AwaitConnect
        );
        assert_eq!(
            choose([(2, 2), (2, 2)].into_iter(), false, || 2),
            Choice::Wait
        );
    }

    #[test]
    fn the_peer_limit_is_read_from_its_settings_preface() {
        // SETTINGS: header table size 4096, then MAX_CONCURRENT_STREAMS 2.
        let frame = [
            0, 0, 12, 4, 0, 0, 0, 0, 0, 0, 1, 0, 0, 16, 0, 0, 3, 0, 0, 0, 2,
        ];
        assert_eq!(preface_max_streams(&frame), Some(2));
        // Followed by more frames in the same read; or cut short in the middle of an entry.
        let mut more = frame.to_vec();
        more.extend_from_slice(&[0, 0, 4, 8, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        assert_eq!(preface_max_streams(&more), Some(2));
        assert_eq!(preface_max_streams(&frame[..18]), None);
        // An empty SETTINGS (no limit), an ACK, another frame, too few bytes.
        assert_eq!(preface_max_streams(&[0, 0, 0, 4, 0, 0, 0, 0, 0]), None);
        let mut ack = frame;
        ack[4] = 1;
        assert_eq!(preface_max_streams(&ack), None);
        assert_eq!(preface_max_streams(&[0, 0, 0, 6, 0, 0, 0, 0, 0]), None);
        assert_eq!(preface_max_streams(&[0, 0]), None);
    }

    #[tokio::test]
    async fn concurrent_first_requests_share_one_connection() {
        let (addr, accepted) = h2_server(None).await;
        let pool = pool(Duration::from_secs(30));
        let a = pool.sender(addr);
        let b = pool.sender(addr);
        let (a, b) = tokio::join!(a, b);
        let (first, _, held_a) = a.unwrap();
        let (second, _, held_b) = b.unwrap();
        assert_eq!(first, second);
        assert_eq!(pool.len(), 1);
        drop((held_a, held_b));
        for _ in 0..5 {
            let resp = pool.send(addr, get()).await;
            assert!(resp.is_ok(), "{resp:?}");
        }
        let (again, _, _) = pool.sender(addr).await.unwrap();
        assert_eq!(again, first);
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn saturated_connections_grow_to_the_cap_then_requests_wait() {
        let server = slow_server(2).await;
        let pool = capped_pool(3, 16);
        let dst = server.addr;
        // Eight slow requests: three connections of two streams each carry six, two wait.
        let sends: Vec<_> = (0..8)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move { pool.send(dst, get()).await.map(|(r, _)| r.status()) })
            })
            .collect();
        until("six requests at the server", || {
            server.arrived.load(Ordering::SeqCst) == 6
        })
        .await;
        until("two requests waiting", || waiting(&pool, dst) == 2).await;
        assert_eq!(server.accepted.load(Ordering::SeqCst), 3);
        assert_eq!(pool.connections(dst), 3);
        server.release.send(true).unwrap();
        for send in sends {
            let status = tokio::time::timeout(Duration::from_secs(20), send)
                .await
                .expect("request hung")
                .unwrap();
            assert_eq!(status.unwrap(), http::StatusCode::OK);
        }
        // The waiters went over the existing connections; the cap held throughout.
        assert_eq!(server.accepted.load(Ordering::SeqCst), 3);
        assert_eq!(server.arrived.load(Ordering::SeqCst), 8);
        assert_eq!(waiting(&pool, dst), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn beyond_the_pending_bound_a_request_fails_at_once() {
        let server = slow_server(1).await;
        let pool = capped_pool(1, 1);
        let dst = server.addr;
        let first = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.send(dst, get()).await.map(|(r, _)| r.status()) })
        };
        until("first at the server", || {
            server.arrived.load(Ordering::SeqCst) == 1
        })
        .await;
        let second = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.send(dst, get()).await.map(|(r, _)| r.status()) })
        };
        until("second waiting", || waiting(&pool, dst) == 1).await;
        let third = tokio::time::timeout(Duration::from_secs(20), pool.send(dst, get()))
            .await
            .expect("an overflowing request must not wait");
        assert!(
            matches!(&third, Err(H2Error::Connect(ce)) if matches!(**ce, ConnectError::Limit(a) if a == dst)),
            "{third:?}"
        );
        server.release.send(true).unwrap();
        for send in [first, second] {
            let status = tokio::time::timeout(Duration::from_secs(20), send)
                .await
                .expect("request hung")
                .unwrap();
            assert_eq!(status.unwrap(), http::StatusCode::OK);
        }
        assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_destination_cap_counts_http2_connections_and_the_excess_waits() {
        let server = slow_server(1).await;
        let pool = sidecar_pool(|s| s.max_connections_per_destination = 1, 16);
        let dst = server.addr;
        let send = || {
            let pool = pool.clone();
            tokio::spawn(async move { pool.send(dst, get()).await.map(|(r, _)| r.status()) })
        };
        let first = send();
        until("first at the server", || {
            server.arrived.load(Ordering::SeqCst) == 1
        })
        .await;
        // The second would grow the pool, but the destination's one connection is taken:
        // refused by the cap, it waits for room instead of failing.
        let second = send();
        until("second waiting", || waiting(&pool, dst) == 1).await;
        assert_eq!(pool.inner.connector.open_to(dst), 1);
        server.release.send(true).unwrap();
        for send in [first, second] {
            let status = tokio::time::timeout(Duration::from_secs(20), send)
                .await
                .expect("request hung")
                .unwrap();
            assert_eq!(status.unwrap(), http::StatusCode::OK);
        }
        assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_stream_counts_until_the_response_body_is_dropped() {
        let (addr, _) = h2_server(None).await;
        let pool = pool(Duration::from_secs(30));
        let (resp, held) = pool.send(addr, get()).await.unwrap();
        let load = |pool: &H2Pool<Empty>| {
            pool.inner.lock()[&addr].conns[0]
                .load
                .in_flight
                .load(Ordering::SeqCst)
        };
        assert_eq!(load(&pool), 1);
        drop(resp);
        assert_eq!(load(&pool), 1, "held by the guard, not the response head");
        drop(held);
        assert_eq!(load(&pool), 0);
    }

    #[tokio::test]
    async fn failed_connect_is_forgotten() {
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = dead.local_addr().unwrap();
        drop(dead);
        let pool = pool(Duration::from_secs(30));
        let err = pool.sender(addr).await.unwrap_err();
        assert!(
            matches!(&err, H2Error::Connect(ce) if matches!(**ce, ConnectError::Unreachable { .. }))
        );
        assert!(pool.is_empty());
    }

    #[tokio::test]
    async fn idle_connections_are_swept() {
        let (addr, _) = h2_server(None).await;
        let pool = pool(Duration::from_secs(30));
        let (_, _, held) = pool.sender(addr).await.unwrap();
        // A connection with a stream open is never idle.
        pool.inner.sweep(Instant::now() + Duration::from_secs(31));
        assert_eq!(pool.len(), 1);
        drop(held);
        pool.inner.sweep(Instant::now());
        assert_eq!(pool.len(), 1);
        pool.inner.sweep(Instant::now() + Duration::from_secs(31));
        assert!(pool.is_empty());
    }

    #[tokio::test]
    async fn closed_connection_is_replaced() {
        let (addr, accepted) = h2_server(Some(1)).await;
        let pool = pool(Duration::from_secs(30));
        for _ in 0..3 {
            let resp = pool.send(addr, get()).await;
            assert!(resp.is_ok(), "{resp:?}");
            drop(resp);
            // The server closes after each request: wait until the pool sees it.
            until("connection closed", || {
                !pool
                    .inner
                    .lock()
                    .get(&addr)
                    .is_some_and(|d| d.conns.iter().any(|c| !c.sender.is_closed()))
            })
            .await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }
}
