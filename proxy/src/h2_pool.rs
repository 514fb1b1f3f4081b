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
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
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
                self.inner.connector.limits().http2_connections_per_destination as usize
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
    /// An upstream stream that flags the first bytes the peer sends: its SETTINGS frame, which
    /// a server must send first (RFC 9113 §3.4), so the connection's stream limit is known.
    struct FirstRead<T> {
        #[pin]
        io: T,
        seen: Option<Arc<AtomicBool>>,
    }
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
        if this.seen.is_some() && buf.filled().len() > before {
            if let Some(seen) = this.seen.take() {
                seen.store(true, Ordering::Release);
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
    let seen = Arc::new(AtomicBool::new(false));
    let io = TokioIo::new(FirstRead {
        io: io.into_inner(),
        seen: Some(seen.clone()),
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
    let (settings_tx, settings_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut conn = Box::pin(conn);
        let mut settings_tx = Some(settings_tx);
        let ended = poll_fn(|cx| {
            let polled = conn.as_mut().poll(cx);
            let max = u32::try_from(conn.current_max_send_streams()).unwrap_or(u32::MAX);
            load.peer_max.store(max, Ordering::Relaxed);
            if settings_tx.is_some() && seen.load(Ordering::Acquire) {
                if let Some(tx) = settings_tx.take() {
                    let _ = tx.send(());
                }
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
    let _ = tokio::time::timeout(limits.connect_timeout.get(), settings_rx).await;
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

    type Empty = http_body_util::Empty<bytes::Bytes>;

    fn pool(idle: Duration) -> H2Pool<Empty> {
        H2Pool::new(
            Connector::new(Arc::new(SelfAddrs::default()), Duration::from_secs(5)),
            idle,
        )
    }

    #[tokio::test]
    async fn concurrent_first_requests_share_one_connection() {
        let (addr, accepted) = h2_server(None).await;
        let pool = pool(Duration::from_secs(30));
        let a = pool.sender(addr);
        let b = pool.sender(addr);
        let (a, b) = tokio::join!(a, b);
        assert_eq!(a.as_ref().unwrap().0, b.unwrap().0);
        assert_eq!(pool.len(), 1);
        let (first, _) = a.unwrap();
        for _ in 0..5 {
            let req = Request::get("http://svc.test/").body(Empty::new()).unwrap();
            let resp = pool.send(addr, req).await;
            assert!(resp.is_ok(), "{resp:?}");
        }
        let (again, _) = pool.sender(addr).await.unwrap();
        assert_eq!(again, first);
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
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
        pool.sender(addr).await.unwrap();
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
            let req = Request::get("http://svc.test/")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            let resp = pool.send(addr, req).await;
            assert!(resp.is_ok(), "{resp:?}");
            drop(resp);
            // The server closes after each request: wait until the pool sees it.
            tokio::time::timeout(Duration::from_secs(20), async {
                while matches!(pool.inner.lock().get(&addr), Some(Slot::Ready { sender, .. }) if !sender.is_closed())
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await
            .expect("connection never closed");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }
}
