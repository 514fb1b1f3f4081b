//! The one way the sidecar serves: one accept loop and one HTTP/1 and HTTP/2 server setup,
//! used by the proxy listeners, the forward proxy, the admin server and the probe servers, so
//! that their timeouts, limits and error handling cannot drift apart.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use mesh_config::Sidecar;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use crate::config::ConfigRx;
use crate::half_close::{HalfClose, Held, InFlight};
use crate::idle::{Activity, Expired, Tracked, Watched};
use crate::park::{Parkable, PARK_AFTER};
use crate::shutdown::Watch;
use crate::tcp::Downstream;

/// Largest request head accepted. Envoy's default limit (60 KiB): beyond it the client gets
/// 431 from hyper rather than the proxy holding arbitrary amounts of header memory.
pub const MAX_HEADER_BYTES: usize = 60 * 1024;

/// Pause after a failed accept (out of file descriptors, out of memory): the error persists
/// until some connection closes, so retrying at once would only spin a core. Short enough that
/// service resumes quickly once descriptors free up.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The cap on downstream connections held at once, shared by every proxy listener and read
/// from the current MeshConfig at each accept, so a change applies to the next connection.
#[derive(Debug)]
pub struct ConnLimit {
    open: AtomicUsize,
    config: ConfigRx,
    refused: Counter,
    /// `open`, as `/metrics` shows it: a leak of connections is a level that never comes back.
    gauge: Gauge,
}

/// One admitted connection; its drop frees the slot.
#[derive(Debug)]
pub struct Admitted(Arc<ConnLimit>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.gauge.dec();
    }
}

impl ConnLimit {
    pub fn new(config: ConfigRx, refused: Counter, gauge: Gauge) -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            config,
            refused,
            gauge,
        })
    }

    /// A slot, or `None` (counted) when the cap is reached.
    pub fn admit(self: &Arc<Self>) -> Option<Admitted> {
        let max = self.config.borrow().config.spec.sidecar.max_connections as usize;
        if self.open.fetch_add(1, Ordering::AcqRel) >= max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            self.refused.inc();
            return None;
        }
        self.gauge.inc();
        Some(Admitted(self.clone()))
    }

    /// Connections held now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

/// Accepts until shutdown and runs `handle` for each connection in its own task. With a
/// `limit`, a connection beyond the cap is closed at once with a reset, so the client fails
/// fast (and may retry elsewhere) instead of waiting in a queue the proxy will not serve.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    limit: Option<Arc<ConnLimit>>,
    mut watch: Watch,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr, Watch) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = watch.signaled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed; backing off");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let admitted = match &limit {
            Some(limit) => match limit.admit() {
                Some(a) => Some(a),
                None => {
                    tracing::debug!(%peer, "connection limit reached; refusing");
                    crate::tcp::Downstream::reset_on_close(&stream);
                    continue;
                }
            },
            None => None,
        };
        // Small writes (headers, RPCs) must not wait for Nagle: latency is the product here.
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection_task(
            handle(stream, peer, watch.clone()),
            admitted,
        ));
    }
}

/// The task of one connection: `served`, then its slot freed. A combinator rather than an
/// `async move` block: a block would keep the captured future in its own slot and move it
/// into a second one to poll it, reserving its size twice in every connection's task (5 KiB
/// of the 10 KiB a held HTTP/1 connection cost before).
fn connection_task<Fut>(served: Fut, admitted: Option<Admitted>) -> impl Future<Output = ()>
where
    Fut: Future<Output = ()>,
{
    served.map(move |()| drop(admitted))
}

/// How an HTTP connection ended, when it was the proxy that ended it.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Http(#[from] hyper::Error),
    #[error("request head not received within the header read timeout")]
    HeaderTimeout,
    #[error("connection idle for the idle timeout")]
    Idle,
}

/// Serves HTTP/1 on `io` with `handler` (upgrades allowed) under the sidecar's header read and
/// idle timeouts, until the client closes, a deadline passes, or shutdown (then gracefully:
/// the request in flight finishes). A client that shuts its write side after the request
/// still gets the answer.
///
/// The first request head counts from the connection's start: a client that connects and
/// never completes a head is cut after the header read timeout. hyper's own header timer is
/// off, because it also runs between keep-alive requests and would cut idle connections that
/// apps rightly keep pooled.
pub async fn serve_http1<I, F, Fut, B>(
    io: I,
    handler: F,
    limits: &Sidecar,
    watch: Watch,
) -> Result<(), ServeError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let activity = Activity::new(true);
    activity.begin_head();
    let svc = tracked_service(handler, activity.clone());
    let conn = std::pin::pin!(http1_builder(true)
        .serve_connection(TokioIo::new(Watched::new(io, activity.clone())), svc)
        .with_upgrades());
    let header = Some(limits.header_read_timeout.get());
    drive(
        conn,
        activity,
        limits.http_idle_timeout.get(),
        header,
        watch,
    )
    .await
}

/// [`serve_http1`] for the proxied data path, where a client that leaves must cancel its
/// request: the socket goes through [`HalfClose`], so a client that half-closes still gets
/// its answer and one that resets its connection cancels the request in flight (its span
/// ends as `downstream_cancelled`, its upstream request is dropped). The handler must keep
/// the request's [`crate::half_close::BodyOpen`] extension with the request body until the
/// body has been read to its end.
pub async fn serve_http1_proxied<I, F, Fut, B>(
    io: I,
    handler: F,
    limits: &Sidecar,
    watch: Watch,
) -> Result<(), ServeError>
where
    I: Downstream,
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    serve_http1_parking(io, handler, limits, watch, PARK_AFTER, None).await
}

/// [`serve_http1_proxied`], parking the connection after `park_after` of quiet (see
/// [`crate::park`]); `parks` counts the parks.
async fn serve_http1_parking<I, F, Fut, B>(
    io: I,
    handler: F,
    limits: &Sidecar,
    mut watch: Watch,
    park_after: Duration,
    parks: Option<&AtomicUsize>,
) -> Result<(), ServeError>
where
    I: Downstream,
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let in_flight = InFlight::new();
    let requests = in_flight.clone();
    let handler = move |mut req: Request<Incoming>| {
        let guard = requests.request();
        if !req.body().is_end_stream() {
            req.extensions_mut().insert(requests.body());
        }
        // A combinator, not an `async move` block: the handler's (large) future is stored
        // in place instead of being moved into a second state machine on every request.
        // Boxed: hyper keeps a slot the size of the service's future for the whole life of
        // the connection (3.3 KiB per idle keep-alive connection before); a box per request
        // costs one allocation while a request is in flight and 8 bytes when idle.
        Box::pin(handler(req).map(move |response| response.map(|body| Held::new(body, guard))))
    };
    let activity = Activity::new(true);
    activity.begin_head();
    let mut svc = tracked_service(handler, activity.clone());
    let mut io = Parkable::new(Watched::new(
        HalfClose::new(io, in_flight.clone()),
        activity.clone(),
    ));
    let marks = io.marks();
    let header = Some(limits.header_read_timeout.get());
    let idle = limits.http_idle_timeout.get();
    loop {
        let mut conn = http1_builder(false)
            .serve_connection(TokioIo::new(io), svc)
            .with_upgrades();
        let quiet = crate::park::quiet(&marks, &in_flight);
        let driven = drive_until(
            std::pin::Pin::new(&mut conn),
            &activity,
            idle,
            header,
            &mut watch,
            Some((park_after, quiet)),
        )
        .await;
        if let Some(ended) = driven {
            return ended;
        }
        // Quiet: take the socket, the bytes hyper read but did not use, and the service back,
        // dropping hyper's buffers. `None`: upgraded, so the connection is no longer HTTP.
        let Some(parts) = conn.into_parts() else {
            return Ok(());
        };
        io = parts.io.into_inner();
        svc = parts.service;
        io.replay(parts.read_buf);
        if let Some(parks) = parks {
            parks.fetch_add(1, Ordering::Relaxed);
        }
        if io.has_replay() {
            continue;
        }
        tokio::select! {
            biased;
            spoke = io.wait_for_client() => {
                if !spoke {
                    return Ok(());
                }
            }
            expired = activity.expired(idle, header) => return Err(expired.into()),
            // Nothing in flight: closing is all a graceful shutdown would do.
            _ = watch.signaled() => return Ok(()),
        }
    }
}

/// The HTTP/1 server settings every listener shares. `half_close`: whether hyper itself
/// ignores a read EOF while a request is in flight (see [`crate::half_close`] for why the
/// proxied path does that below hyper instead).
fn http1_builder(half_close: bool) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(MAX_HEADER_BYTES)
        .half_close(half_close);
    builder
}

/// Serves HTTP/2 (prior knowledge) on `io`: PINGs at the keepalive interval close a
/// connection whose client stopped answering; with no stream open for the idle timeout the
/// connection is closed gracefully (GOAWAY).
pub async fn serve_http2<I, F, Fut, B>(
    io: I,
    handler: F,
    limits: &Sidecar,
    watch: Watch,
) -> Result<(), ServeError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let activity = Activity::new(false);
    let svc = tracked_service(handler, activity.clone());
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .keep_alive_interval(limits.http2_keepalive_interval.non_zero())
        .keep_alive_timeout(limits.http2_keepalive_timeout.get());
    // Boxed: an HTTP/2 connection's state is several KiB, and the future of a proxied
    // connection is as large as its largest branch, so inline it would size every HTTP/1
    // connection's task too (4.4 KiB instead of 2.8). HTTP/2 connections are few and long.
    let mut conn =
        Box::pin(builder.serve_connection(TokioIo::new(Watched::new(io, activity.clone())), svc));
    drive(
        conn.as_mut(),
        activity,
        limits.http_idle_timeout.get(),
        None,
        watch,
    )
    .await
}

/// The hyper service around `handler`: each request holds a guard until its response body
/// ends, so the connection is not idle while a response (a long poll, a stream) is open.
fn tracked_service<F, Fut, B>(
    handler: F,
    activity: Arc<Activity>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Tracked<B>>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Tracked<B>>, Infallible>> + Send,
> + Send
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
{
    let handler = Arc::new(handler);
    hyper::service::service_fn(move |req| {
        let guard = activity.request();
        // As in `serve_http1_proxied`: mapped in place rather than moved into an async block.
        handler(req).map(move |response| Ok(response.map(|body| Tracked::new(body, guard))))
    })
}

/// What both HTTP versions' connections can do: finish, or close gracefully.
trait GracefulConn: Future<Output = Result<(), hyper::Error>> {
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>);
}

impl<I, S, B> GracefulConn for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>) {
        hyper::server::conn::http1::UpgradeableConnection::graceful_shutdown(self)
    }
}

impl<I, S, B, E> GracefulConn for hyper::server::conn::http2::Connection<I, S, E>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>) {
        hyper::server::conn::http2::Connection::graceful_shutdown(self)
    }
}

/// Runs `conn` until it ends, a deadline of `activity` passes, or shutdown.
///
/// `conn` is pinned by the caller: taken by value, it would be kept twice in the connection's
/// task (the argument's slot and the pinned copy), 0.7 KiB more per HTTP/1 connection.
async fn drive<C: GracefulConn>(
    conn: std::pin::Pin<&mut C>,
    activity: Arc<Activity>,
    idle: Duration,
    header: Option<Duration>,
    mut watch: Watch,
) -> Result<(), ServeError> {
    let never = None::<(Duration, fn() -> bool)>;
    drive_until(conn, &activity, idle, header, &mut watch, never)
        .await
        .unwrap_or(Ok(()))
}

/// [`drive`], or `None` once `park`'s check (`Some((period, check))`: see
/// [`Activity::expired_or_quiet`]) finds the connection quiet (it is then untouched: no
/// graceful shutdown has begun). The check shares the deadlines' timer: a second timer here
/// was polled with the connection each time its task woke, about 450 instructions per
/// keep-alive request.
async fn drive_until<C: GracefulConn>(
    mut conn: std::pin::Pin<&mut C>,
    activity: &Activity,
    idle: Duration,
    header: Option<Duration>,
    watch: &mut Watch,
    park: Option<(Duration, impl FnMut() -> bool)>,
) -> Option<Result<(), ServeError>> {
    tokio::select! {
        // The connection first: one that is ready to end (an upgrade) is never parked.
        biased;
        r = conn.as_mut() => Some(r.map_err(ServeError::from)),
        expired = activity.expired_or_quiet(idle, header, park) => match expired {
            Expired::Quiet => None,
            expired => Some(Err(expired.into())),
        },
        _ = watch.signaled() => {
            conn.as_mut().graceful_shutdown();
            Some(conn.await.map_err(ServeError::from))
        }
    }
}

impl From<Expired> for ServeError {
    fn from(expired: Expired) -> Self {
        match expired {
            // Nothing in flight: dropping the connection closes the socket.
            Expired::Idle => ServeError::Idle,
            Expired::HeaderRead => ServeError::HeaderTimeout,
            // Asked for by `drive_until` alone, which parks instead; were it to reach here,
            // the connection is quiet, so it ends as an idle one would.
            Expired::Quiet => ServeError::Idle,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Snapshot;

    fn snapshot(max: u32) -> Arc<Snapshot> {
        let mut config = mesh_config::MeshConfig::default();
        config.spec.sidecar.max_connections = max;
        Arc::new(Snapshot {
            config: Arc::new(config),
            ..Snapshot::default_config()
        })
    }

    /// Reads until `needle` has arrived; the bytes read so far.
    async fn read_until(client: &mut tokio::net::TcpStream, seen: &mut Vec<u8>, needle: &[u8]) {
        use tokio::io::AsyncReadExt;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !seen.windows(needle.len()).any(|w| w == needle) {
            let mut buf = [0u8; 1024];
            let n = tokio::time::timeout_at(deadline, client.read(&mut buf))
                .await
                .expect("answer in time")
                .unwrap();
            assert!(n > 0, "closed; got {:?}", String::from_utf8_lossy(seen));
            seen.extend_from_slice(&buf[..n]);
        }
    }

    #[tokio::test]
    async fn a_parked_connection_serves_what_comes_next() {
        use tokio::io::AsyncWriteExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let parks = Arc::new(AtomicUsize::new(0));
        let counted = parks.clone();
        let shutdown = crate::shutdown::Shutdown::new();
        let watch = shutdown.watch();
        let served = tokio::spawn(async move {
            let limits = mesh_config::MeshConfig::default().spec.sidecar;
            let echo_path = |req: Request<Incoming>| async move {
                let path = bytes::Bytes::from(format!("<{}>", req.uri().path()));
                Response::new(http_body_util::Full::new(path))
            };
            let park_after = Duration::from_millis(20);
            serve_http1_parking(
                server,
                echo_path,
                &limits,
                watch,
                park_after,
                Some(&counted),
            )
            .await
        });
        let quiet = Duration::from_millis(150);
        let mut seen = Vec::new();
        client
            .write_all(b"GET /one HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .unwrap();
        read_until(&mut client, &mut seen, b"</one>").await;
        tokio::time::sleep(quiet).await;
        assert!(parks.load(Ordering::Relaxed) >= 1, "parked once idle");
        // A head cut in two around a park: the first half is read while parked, hyper takes it
        // back unused at the next park, and the whole head reaches a new hyper connection.
        let parked = parks.load(Ordering::Relaxed);
        client.write_all(b"GET /two HTTP/1.1\r\nho").await.unwrap();
        tokio::time::sleep(quiet).await;
        assert!(parks.load(Ordering::Relaxed) > parked, "parked mid-head");
        client.write_all(b"st: a\r\n\r\n").await.unwrap();
        read_until(&mut client, &mut seen, b"</two>").await;
        // Pipelined requests right after a park.
        tokio::time::sleep(quiet).await;
        client
            .write_all(
                b"GET /three HTTP/1.1\r\nhost: a\r\n\r\nGET /four HTTP/1.1\r\nhost: a\r\n\r\n",
            )
            .await
            .unwrap();
        read_until(&mut client, &mut seen, b"</four>").await;
        let text = String::from_utf8_lossy(&seen);
        assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 4, "{text}");
        assert!(text.find("</three>") < text.find("</four>"), "{text}");
        // The client leaving ends a parked connection.
        tokio::time::sleep(quiet).await;
        drop(client);
        let ended = tokio::time::timeout(Duration::from_secs(5), served).await;
        assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
    }

    #[test]
    fn a_connection_task_holds_its_future_once() {
        let served = async {
            let held = [1u8; 4096];
            tokio::task::yield_now().await;
            std::hint::black_box(&held);
        };
        let alone = std::mem::size_of_val(&served);
        assert!(alone >= 4096);
        let task = connection_task(served, None);
        assert!(
            std::mem::size_of_val(&task) < alone + 64,
            "{} bytes for a {alone}-byte connection future",
            std::mem::size_of_val(&task)
        );
    }

    #[test]
    fn the_cap_follows_config_changes_and_slots_free_on_drop() {
        let (tx, rx) = tokio::sync::watch::channel(snapshot(1));
        let refused = Counter::default();
        let gauge = Gauge::default();
        let limit = ConnLimit::new(rx, refused.clone(), gauge.clone());
        let first = limit.admit().expect("below the cap");
        assert!(limit.admit().is_none());
        assert_eq!(refused.get(), 1);
        // A raised cap applies to the next connection, without a restart.
        tx.send(snapshot(2)).unwrap();
        let second = limit.admit().expect("raised cap");
        assert_eq!((limit.open(), gauge.get()), (2, 2));
        drop((first, second));
        assert_eq!((limit.open(), gauge.get()), (0, 0));
    }
}
