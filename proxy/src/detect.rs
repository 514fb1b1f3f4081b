//! Protocol detection: the first bytes on a connection decide how it is proxied.
//!
//! The client's first bytes decide (read up to [`DETECT_BUFFER`]): the HTTP/2 connection preface
//! means h2c (prior knowledge), a well-formed HTTP/1 request line means HTTP/1, a TLS ClientHello
//! or anything else is opaque TCP. A connection on which nobody has said anything yet stays
//! undecided: silence is not a protocol. Pooled and pre-connecting clients (hyper's pool parks a
//! connection it finished after an idle one won the race; apps warm pools up) open connections
//! and write on them seconds later, and those must still be traced.
//!
//! Silence does matter for protocols where the server speaks first (SMTP, MySQL, FTP,
//! POP3...): their clients wait for the greeting and never write. So when the client
//! has said nothing for [`DETECT_TIMEOUT`], the proxy opens the connection to the destination
//! and waits for whichever side speaks first. The server first: the connection is opaque and
//! the greeting is relayed (through that same connection: no second connect). The client first:
//! its bytes decide as above; if they are opaque, that connection carries them, and if they are
//! HTTP it is closed, since HTTP goes through the pooled clients.
//!
//! The design biases towards availability: whenever the client's bytes are not clearly HTTP the
//! connection is forwarded as opaque TCP, which always works (it only loses L7 visibility),
//! whereas misreading a non-HTTP stream as HTTP would break it.

use std::future::Future;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::{sleep_until, Instant};

use crate::error::ConnectError;
use crate::prefixed::Prefixed;

/// How long the client may stay silent before the proxy checks whether the server speaks first.
///
/// A server-speaks-first protocol on a port missing from `opaquePorts` (MySQL, SMTP...) sees its
/// greeting delayed by this once per connection, so it should be short; but each check costs an
/// upstream connection opened early, and HTTP clients write as soon as they connect (a starved
/// client on a busy node can take well over 100 ms). One second keeps both cheap (linkerd waits
/// 10 s before it treats a silent client as opaque); listing the port in `opaquePorts` removes
/// the wait entirely.
/// Silence itself decides nothing, so a slower client only costs that early connection.
pub const DETECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long the client's first message may take to become decidable once its first byte came.
///
/// HTTP clients write a request line in one go, so a first message still undecided after a
/// second is a protocol that happens to start like HTTP (or a client stalled mid-line); it is
/// proxied as opaque TCP rather than held.
pub const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a connection on which neither side has said anything is kept before it is closed.
///
/// The same bound as Envoy's TCP proxy idle timeout (1 h): a client that pre-connects keeps its
/// connection through any realistic pool idle time (hyper 90 s, Go 90 s, OkHttp 5 min), while a
/// connection that nobody ever uses, with the upstream connection opened for the server-first
/// check, does not stay open for ever. A server that closes idle connections sooner still does:
/// its close is relayed like a greeting.
pub const UNDECIDED_IDLE_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// Enough for any request line worth tracing; longer lines are judged on their first KiB.
pub const DETECT_BUFFER: usize = 1024;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the client speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    Opaque,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
            Protocol::Opaque => "opaque",
        }
    }
}

/// How detection ended on one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detection {
    /// The client's first bytes are an HTTP/1 request line.
    Http1,
    /// The client's first bytes are the HTTP/2 connection preface.
    Http2,
    /// The client's first bytes are not HTTP (TLS, a binary protocol, other text): opaque TCP.
    Opaque,
    /// The client closed its side before saying anything: opaque TCP, so the server sees the
    /// close and may still answer a half-close.
    ClientClosed,
    /// The client's first message began but did not become decidable within
    /// [`FIRST_MESSAGE_TIMEOUT`]: opaque TCP.
    TimedOut,
    /// The client stayed silent and the server spoke (or closed) first: opaque TCP, with what
    /// the server sent relayed.
    ServerFirst,
    /// Neither side said anything within [`UNDECIDED_IDLE_TIMEOUT`]: the connection is closed.
    Idle,
    /// Neither side had said anything when shutdown began: the connection is closed, as an HTTP
    /// server closes its idle connections on shutdown.
    Shutdown,
}

impl Detection {
    /// Every outcome, for metrics resolved up front.
    pub const ALL: [Detection; 8] = [
        Detection::Http1,
        Detection::Http2,
        Detection::Opaque,
        Detection::ClientClosed,
        Detection::TimedOut,
        Detection::ServerFirst,
        Detection::Idle,
        Detection::Shutdown,
    ];

    /// Position in [`Detection::ALL`] (declaration order).
    pub fn index(self) -> usize {
        self as usize
    }

    /// How the connection is proxied; `None`: it is closed, nothing was said on it.
    pub fn protocol(self) -> Option<Protocol> {
        match self {
            Detection::Http1 => Some(Protocol::Http1),
            Detection::Http2 => Some(Protocol::Http2),
            Detection::Opaque
            | Detection::ClientClosed
            | Detection::TimedOut
            | Detection::ServerFirst => Some(Protocol::Opaque),
            Detection::Idle | Detection::Shutdown => None,
        }
    }

    /// The `outcome` label in `/metrics`.
    pub fn as_str(self) -> &'static str {
        match self {
            Detection::Http1 => "http1",
            Detection::Http2 => "http2",
            Detection::Opaque => "opaque",
            Detection::ClientClosed => "client_closed",
            Detection::TimedOut => "timed_out",
            Detection::ServerFirst => "server_first",
            Detection::Idle => "idle",
            Detection::Shutdown => "shutdown",
        }
    }
}

impl From<Protocol> for Detection {
    fn from(p: Protocol) -> Self {
        match p {
            Protocol::Http1 => Detection::Http1,
            Protocol::Http2 => Detection::Http2,
            Protocol::Opaque => Detection::Opaque,
        }
    }
}

/// The bounds of detection; [`Default`] gives the documented constants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Client silence before the server-first check: [`DETECT_TIMEOUT`].
    pub server_first_check: Duration,
    /// From the client's first byte to a decision: [`FIRST_MESSAGE_TIMEOUT`].
    pub first_message: Duration,
    /// Silence on both sides before closing: [`UNDECIDED_IDLE_TIMEOUT`].
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            server_first_check: DETECT_TIMEOUT,
            first_message: FIRST_MESSAGE_TIMEOUT,
            idle: UNDECIDED_IDLE_TIMEOUT,
        }
    }
}

/// What detection learned and what it holds for whoever proxies the connection next.
#[derive(Debug)]
pub struct Detected<U> {
    pub detection: Detection,
    /// The client's bytes read so far, to be replayed in front of its stream.
    pub prefix: BytesMut,
    /// The connection to the destination opened for the server-first check, with what the
    /// server sent on it in front (its greeting, for [`Detection::ServerFirst`]). Opaque TCP
    /// carries on over it; HTTP drops it (its requests go through the pooled clients).
    pub upstream: Option<Prefixed<U>>,
}

/// Why detection ended without a decision; each means the client connection is done.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// Reading from the client failed (typically a reset).
    #[error("client connection failed during detection: {0}")]
    Client(#[source] std::io::Error),
    /// The connection opened for the server-first check failed while both sides were silent.
    #[error("upstream connection failed during detection: {0}")]
    Upstream(#[source] std::io::Error),
    /// The connection for the server-first check could not be opened: the client is reset, as
    /// a refused connection would have been without the proxy.
    #[error("server-first check: {0}")]
    Connect(#[from] ConnectError),
}

impl<U> Detected<U> {
    fn closed(detection: Detection) -> Self {
        Self {
            detection,
            prefix: BytesMut::new(),
            upstream: None,
        }
    }
}

/// Classifies a prefix of the stream; `None` means the bytes so far do not decide yet.
pub fn classify(buf: &[u8]) -> Option<Protocol> {
    if buf.is_empty() {
        return None;
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(Protocol::Http2);
    }
    // TLS handshake record: content type 22, major version 3.
    if buf[0] == 0x16 {
        return Some(Protocol::Opaque);
    }
    // Only the request line decides: once httparse has read a valid version, the line is
    // HTTP/1 whatever follows (a bad header is the HTTP server's to answer with 400).
    let mut headers = [httparse::EMPTY_HEADER; 0];
    let mut req = httparse::Request::new(&mut headers);
    let parsed = req.parse(buf);
    if req.version.is_some() {
        return Some(Protocol::Http1);
    }
    match parsed {
        Ok(httparse::Status::Complete(_)) => Some(Protocol::Http1),
        // A request line longer than the buffer: a token method and a space so far are good
        // enough to let the HTTP server judge (and answer 414/400).
        Ok(httparse::Status::Partial) if buf.len() >= DETECT_BUFFER => {
            Some(req.method.map_or(Protocol::Opaque, |_| Protocol::Http1))
        }
        Ok(httparse::Status::Partial) => None,
        Err(_) => Some(Protocol::Opaque),
    }
}

/// Which side acted first while both were silent.
enum FirstMove {
    Client(std::io::Result<usize>),
    Server(std::io::Result<usize>),
    Idle,
    Shutdown,
}

/// Detects what the client connection `io` speaks.
///
/// `connect` opens the connection to the destination for the server-first check; it is called
/// at most once, and only after the client was silent for `timeouts.server_first_check`.
/// `shutdown` completes when the proxy starts draining: a connection on which nothing was said
/// is then closed, while one whose client has started to speak is decided as usual.
pub async fn detect<I, U, C, F, S>(
    io: &mut I,
    connect: C,
    shutdown: S,
    timeouts: Timeouts,
) -> Result<Detected<U>, DetectError>
where
    I: AsyncRead + Unpin,
    U: AsyncRead + Unpin,
    C: FnOnce() -> F,
    F: Future<Output = Result<U, ConnectError>>,
    S: Future<Output = ()>,
{
    let idle_deadline = Instant::now() + timeouts.idle;
    let mut buf = BytesMut::with_capacity(DETECT_BUFFER);
    tokio::pin!(shutdown);

    // The client's first bytes, for a while without involving the server.
    let check_at = Instant::now() + timeouts.server_first_check;
    let read = tokio::select! {
        biased;
        r = io.read_buf(&mut buf) => Some(r),
        () = &mut shutdown => return Ok(Detected::closed(Detection::Shutdown)),
        () = sleep_until(check_at) => None,
    };
    if let Some(read) = read {
        return first_message(io, buf, read, None, timeouts).await;
    }

    // The client is silent: open the connection that lets the server speak first, listening to
    // the client meanwhile (a connect may take up to the connect timeout). A client that
    // speaks now makes the connection attempt moot.
    let connecting = connect();
    tokio::pin!(connecting);
    let connected = tokio::select! {
        biased;
        r = io.read_buf(&mut buf) => Err(r),
        c = &mut connecting => Ok(c),
        () = &mut shutdown => return Ok(Detected::closed(Detection::Shutdown)),
        () = sleep_until(idle_deadline) => return Ok(Detected::closed(Detection::Idle)),
    };
    let mut upstream = match connected {
        Ok(c) => c?,
        Err(read) => return first_message(io, buf, read, None, timeouts).await,
    };

    // Whoever speaks first decides.
    let mut greeting = BytesMut::with_capacity(DETECT_BUFFER);
    let first = tokio::select! {
        biased;
        r = io.read_buf(&mut buf) => FirstMove::Client(r),
        r = upstream.read_buf(&mut greeting) => FirstMove::Server(r),
        () = &mut shutdown => FirstMove::Shutdown,
        () = sleep_until(idle_deadline) => FirstMove::Idle,
    };
    match first {
        FirstMove::Client(read) => {
            let upstream = Some(Prefixed::new(BytesMut::new(), upstream));
            first_message(io, buf, read, upstream, timeouts).await
        }
        // A greeting, or a close (0 bytes): either is relayed to the client as is.
        FirstMove::Server(read) => {
            read.map_err(DetectError::Upstream)?;
            Ok(Detected {
                detection: Detection::ServerFirst,
                prefix: buf,
                upstream: Some(Prefixed::new(greeting, upstream)),
            })
        }
        FirstMove::Idle => Ok(Detected::closed(Detection::Idle)),
        FirstMove::Shutdown => Ok(Detected::closed(Detection::Shutdown)),
    }
}

/// The client has spoken (`read` is its first read): reads until its bytes decide, the buffer
/// is full, or `timeouts.first_message` has passed.
async fn first_message<I, U>(
    io: &mut I,
    mut buf: BytesMut,
    read: std::io::Result<usize>,
    upstream: Option<Prefixed<U>>,
    timeouts: Timeouts,
) -> Result<Detected<U>, DetectError>
where
    I: AsyncRead + Unpin,
{
    let detection = 'decide: {
        if read.map_err(DetectError::Client)? == 0 {
            break 'decide Detection::ClientClosed;
        }
        let deadline = Instant::now() + timeouts.first_message;
        loop {
            if let Some(p) = classify(&buf) {
                break 'decide p.into();
            }
            if buf.len() >= DETECT_BUFFER {
                break 'decide Detection::Opaque;
            }
            let read = tokio::select! {
                r = io.read_buf(&mut buf) => Some(r),
                () = sleep_until(deadline) => None,
            };
            let Some(read) = read else {
                break 'decide Detection::TimedOut;
            };
            // The client closed its side mid-message: what it sent is forwarded as is.
            if read.map_err(DetectError::Client)? == 0 {
                break 'decide Detection::Opaque;
            }
        }
    };
    Ok(Detected {
        detection,
        prefix: buf,
        upstream,
    })
}

#[cfg(test)]
mod tests;
