//! HTTP/2 upstream connections: one multiplexed connection per destination socket address.
//!
//! Keyed by the destination rather than the request URI, so requests keep the client's
//! `:authority` (virtual hosts, gRPC routing) while sharing the connection the proxy dialled.
//! Concurrent first requests to a destination share one connect; a closed connection is
//! replaced on the next request; connections unused for the idle timeout are let go (their
//! in-flight streams still finish).

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once, Weak};
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, FutureExt, Shared};
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::client::conn::http2::{Builder, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::connect::Connector;
use crate::error::ConnectError;

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

enum Slot<B> {
    /// A connect in progress (and the id its connection will have); later requests await it.
    Connecting(u64, Connecting<B>),
    Ready {
        sender: SendRequest<B>,
        /// Tells this connection from a later one to the same destination.
        id: u64,
        last_used: Instant,
    },
}

struct Inner<B> {
    connector: Connector,
    idle_timeout: Duration,
    slots: Mutex<HashMap<SocketAddr, Slot<B>>>,
    next_id: AtomicU64,
    sweeper: Once,
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
    fn lock(&self) -> MutexGuard<'_, HashMap<SocketAddr, Slot<B>>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sweep(&self, now: Instant) {
        self.lock().retain(|_, slot| match slot {
            Slot::Connecting(..) => true,
            Slot::Ready {
                sender, last_used, ..
            } => {
                !sender.is_closed() && now.saturating_duration_since(*last_used) < self.idle_timeout
            }
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
        Self {
            inner: Arc::new(Inner {
                connector,
                idle_timeout,
                slots: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                sweeper: Once::new(),
            }),
        }
    }

    /// Sends `req` to `dst` over the destination's connection. A request the connection
    /// refused before sending it (connection just closed) is retried once on a new one.
    pub async fn send(
        &self,
        dst: SocketAddr,
        mut req: Request<B>,
    ) -> Result<Response<Incoming>, H2Error> {
        let mut retried = false;
        loop {
            let (id, mut sender) = self.sender(dst).await?;
            if let Err(e) = sender.ready().await {
                self.evict(dst, id);
                if retried {
                    return Err(H2Error::Request(Arc::new(e)));
                }
                retried = true;
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(resp),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if !retried => {
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

    /// The open connection to `dst`, or the outcome of the (possibly shared) connect.
    async fn sender(&self, dst: SocketAddr) -> Result<(u64, SendRequest<B>), H2Error> {
        let (id, connecting) = {
            let mut slots = self.inner.lock();
            match slots.get_mut(&dst) {
                Some(Slot::Ready {
                    sender,
                    id,
                    last_used,
                }) if !sender.is_closed() => {
                    *last_used = Instant::now();
                    return Ok((*id, sender.clone()));
                }
                Some(Slot::Connecting(id, c)) => (*id, c.clone()),
                _ => {
                    let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
                    let c = open(self.inner.connector.clone(), dst).boxed().shared();
                    slots.insert(dst, Slot::Connecting(id, c.clone()));
                    (id, c)
                }
            }
        };
        let result = connecting.clone().await;
        let mut slots = self.inner.lock();
        // Whichever waiter gets here first records the outcome of this connect; others find
        // it already recorded (or replaced by a newer connection) and leave the slot alone.
        let ours = matches!(slots.get(&dst), Some(Slot::Connecting(_, c)) if c.ptr_eq(&connecting));
        match result {
            Ok(sender) => {
                if ours {
                    slots.insert(
                        dst,
                        Slot::Ready {
                            sender: sender.clone(),
                            id,
                            last_used: Instant::now(),
                        },
                    );
                    drop(slots);
                    self.start_sweeper();
                }
                Ok((id, sender))
            }
            Err(e) => {
                if ours {
                    slots.remove(&dst);
                }
                Err(e)
            }
        }
    }

    /// Forgets connection `id` to `dst` (if it is still the current one).
    fn evict(&self, dst: SocketAddr, id: u64) {
        let mut slots = self.inner.lock();
        if matches!(slots.get(&dst), Some(Slot::Ready { id: current, .. }) if *current == id) {
            slots.remove(&dst);
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

/// Dials `dst` and runs the HTTP/2 (prior knowledge) handshake; the connection is driven by
/// its own task, which ends when the server closes it or every handle and stream is gone.
async fn open<B>(connector: Connector, dst: SocketAddr) -> Result<SendRequest<B>, H2Error>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let io = connector
        .dial(dst)
        .await
        .map_err(|e| H2Error::Connect(Arc::new(e)))?;
    let limits = connector.limits();
    let mut builder = Builder::new(TokioExecutor::new());
    // PINGs only while streams are open: that is when a dead peer costs requests, and idle
    // pings would trip servers' ping-abuse limits (grpc-go's enforcement policy). An idle
    // connection to a dead peer is found by the first request's pings, or swept as idle.
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.http2_keepalive_interval.non_zero())
        .keep_alive_timeout(limits.http2_keepalive_timeout.get())
        .keep_alive_while_idle(false);
    let (sender, conn) = builder
        .handshake(io)
        .await
        .map_err(|e| H2Error::Handshake(Arc::new(e)))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(%dst, error = %e, "upstream HTTP/2 connection ended with an error");
        }
    });
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
