//! The upstream app: answers every request with its own body, over HTTP/1.1 or h2c (prior
//! knowledge) on the same port, as a pod's app port takes whichever protocol the caller
//! speaks. A gRPC call (`content-type: application/grpc`) gets its message back in a gRPC
//! frame with `grpc-status: 0` in the trailers, or a non-zero status when the request body is
//! not one well-formed message. It runs on its own runtime thread so that serving does not
//! compete with the load generator's scheduler.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

use crate::{grpc, server};

/// A body of at most one data frame followed by optional trailers (gRPC's status).
pub struct EchoBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl EchoBody {
    fn new(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        EchoBody {
            data: (!data.is_empty()).then_some(data),
            trailers,
        }
    }
}

impl Body for EchoBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

/// Requests that reached the echo over HTTP/2, every echo server of the process together: a
/// bench checks with it that an h2c load stayed HTTP/2 through the sidecars.
static HTTP2_REQUESTS: AtomicU64 = AtomicU64::new(0);

/// Requests answered over HTTP/2 so far (all echo servers of this process).
pub fn http2_requests() -> u64 {
    HTTP2_REQUESTS.load(Ordering::Relaxed)
}

/// gRPC status codes the echo answers with.
const GRPC_OK: &str = "0";
/// INTERNAL: the request body was not one uncompressed message.
const GRPC_INTERNAL: &str = "13";

async fn echo(req: http::Request<Incoming>) -> Result<http::Response<EchoBody>, Infallible> {
    if req.version() == http::Version::HTTP_2 {
        HTTP2_REQUESTS.fetch_add(1, Ordering::Relaxed);
    }
    let is_grpc = grpc::is_grpc(req.headers().get(http::header::CONTENT_TYPE));
    let body = match req.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    if !is_grpc {
        return Ok(http::Response::new(EchoBody::new(body, None)));
    }
    let (data, status, message) = match grpc::decode(&body) {
        Ok(msg) => (grpc::encode(msg), GRPC_OK, None),
        Err(e) => (Bytes::new(), GRPC_INTERNAL, Some(e.to_string())),
    };
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static(status));
    if let Some(m) = message.and_then(|m| HeaderValue::from_str(&m).ok()) {
        trailers.insert("grpc-message", m);
    }
    let mut resp = http::Response::new(EchoBody::new(data, Some(trailers)));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(grpc::CONTENT_TYPE),
    );
    Ok(resp)
}

/// Starts the echo server on 127.0.0.1 on a dedicated single-threaded runtime; returns its
/// address. The thread lives as long as the process.
pub fn start() -> anyhow::Result<SocketAddr> {
    server::spawn("echo", |tcp| async move {
        let _ = tcp.set_nodelay(true);
        let _ = auto::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(tcp), service_fn(echo))
            .await;
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use hyper::client::conn::{http1, http2};
    use tokio::net::TcpStream;

    #[tokio::test]
    async fn answers_http1_and_h2c_on_one_port() {
        let addr = start().unwrap();
        let h2_before = http2_requests();

        let tcp = TcpStream::connect(addr).await.unwrap();
        let (mut h1, conn) = http1::handshake(TokioIo::new(tcp)).await.unwrap();
        tokio::spawn(conn);
        let req = http::Request::post("/echo")
            .header(http::header::HOST, "echo")
            .body(Full::new(Bytes::from_static(b"one")))
            .unwrap();
        let resp = h1.send_request(req).await.unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_11);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"one");

        let tcp = TcpStream::connect(addr).await.unwrap();
        let (mut h2, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = http::Request::post(format!("http://{addr}/echo"))
            .body(Full::new(Bytes::from_static(b"two")))
            .unwrap();
        let resp = h2.send_request(req).await.unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"two");
        // Other tests' servers count too, so at least the one h2c request.
        assert!(http2_requests() > h2_before);
    }

    async fn grpc_call(addr: SocketAddr, body: Bytes) -> (http::HeaderMap, Bytes, HeaderMap) {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (mut h2, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = http::Request::post(format!("http://{addr}/bench.Echo/Echo"))
            .header(http::header::CONTENT_TYPE, grpc::CONTENT_TYPE)
            .header("te", "trailers")
            .body(Full::new(body))
            .unwrap();
        let resp = h2.send_request(req).await.unwrap();
        let headers = resp.headers().clone();
        let collected = resp.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap_or_default();
        (headers, collected.to_bytes(), trailers)
    }

    #[tokio::test]
    async fn grpc_unary_is_echoed_with_status_in_trailers() {
        let addr = start().unwrap();
        let (headers, body, trailers) = grpc_call(addr, grpc::encode(b"ping")).await;
        assert_eq!(headers[http::header::CONTENT_TYPE], grpc::CONTENT_TYPE);
        assert_eq!(grpc::decode(&body), Ok(&b"ping"[..]));
        assert_eq!(trailers["grpc-status"], "0");

        let (_, body, trailers) = grpc_call(addr, Bytes::from_static(b"\0\0")).await;
        assert!(body.is_empty());
        assert_eq!(trailers["grpc-status"], GRPC_INTERNAL);
        assert!(trailers.contains_key("grpc-message"));
    }
}
