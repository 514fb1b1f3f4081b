//! The tracing layer around the HTTP service: it starts the request's span (rewriting the
//! trace-context headers the upstream gets) and finishes it exactly once, however the request
//! ends:
//!
//! - the response body ends: the span ends then, with the status, the sizes and the gRPC
//!   status (from the trailers, or the headers of a trailers-only response);
//! - the response body fails: [`ErrorReason::UpstreamReset`];
//! - the inner service fails: the [`Failure`]'s reason, or
//!   [`ErrorReason::DownstreamCancelled`] when it failed because the client's request body
//!   broke off;
//! - the response future or body is dropped first (hyper does so when the client leaves):
//!   [`ErrorReason::DownstreamCancelled`].
//!
//! Keeping start and finish in one place is what makes `spans_started` balance against
//! exported + dropped + queued: no path can start a span and forget it.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};

use super::{grpc, ActiveSpan, Direction, ErrorReason, Outcome, Tracer};

/// Why the inner service answered no response: what the client is told, and the span's
/// reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failure {
    pub status: StatusCode,
    /// The short plain-text body the client gets.
    pub message: &'static str,
    pub reason: ErrorReason,
}

/// What the span learns from the request body while it streams upstream.
#[derive(Debug, Default)]
pub struct Meter {
    bytes: AtomicU64,
    /// The client's body broke off (it closed or reset mid-body).
    failed: AtomicBool,
}

impl Meter {
    /// Counts `n` body bytes.
    pub fn add(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// The client's request body failed.
    pub fn fail(&self) {
        self.failed.store(true, Ordering::Relaxed);
    }

    fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }
}

/// A request body the layer can measure. Only a recording span attaches a [`Meter`], so an
/// unsampled request pays for no counting.
pub trait Measured {
    fn measure(&mut self, meter: Arc<Meter>);
}

/// Traces the requests of one downstream connection towards one upstream address.
#[derive(Clone, Debug)]
pub struct TraceLayer {
    tracer: Tracer,
    direction: Direction,
    peer: SocketAddr,
    upstream: SocketAddr,
}

impl TraceLayer {
    /// `peer` is the downstream client, `upstream` the address requests are forwarded to.
    pub fn new(
        tracer: Tracer,
        direction: Direction,
        peer: SocketAddr,
        upstream: SocketAddr,
    ) -> Self {
        Self {
            tracer,
            direction,
            peer,
            upstream,
        }
    }
}

impl<S> tower::Layer<S> for TraceLayer {
    type Service = TraceService<S>;

    fn layer(&self, inner: S) -> TraceService<S> {
        TraceService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`TraceLayer`] makes.
#[derive(Clone, Debug)]
pub struct TraceService<S> {
    inner: S,
    layer: TraceLayer,
}

impl<S, B, RB> tower::Service<Request<B>> for TraceService<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>, Error = Failure>,
    B: Measured,
    RB: Body<Data = Bytes> + Unpin,
{
    type Response = Response<SpanBody<RB>>;
    type Error = Failure;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Failure>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (mut parts, mut body) = req.into_parts();
        let l = &self.layer;
        let span = l.tracer.start(l.direction, &mut parts, l.peer, l.upstream);
        let meter = span.is_recording().then(|| {
            let meter = Arc::new(Meter::default());
            body.measure(meter.clone());
            meter
        });
        ResponseFuture {
            inner: self.inner.call(Request::from_parts(parts, body)),
            span: Some(span),
            meter,
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner service's answer; dropping it while pending (the client left) ends the span
    /// as [`ErrorReason::DownstreamCancelled`], through [`ActiveSpan`]'s drop.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        span: Option<ActiveSpan>,
        meter: Option<Arc<Meter>>,
    }
}

impl<F, RB> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<RB>, Failure>>,
    RB: Body<Data = Bytes> + Unpin,
{
    type Output = Result<Response<SpanBody<RB>>, Failure>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        let span = this.span.take().unwrap_or_default();
        let meter = this.meter.take();
        Poll::Ready(match result {
            Ok(resp) => {
                let status = resp.status();
                let (parts, body) = resp.into_parts();
                let mut body = SpanBody::new(body, span, status, meter);
                if grpc::is_grpc(&parts.headers) {
                    // A trailers-only response carries its status in the headers.
                    body.grpc_status = grpc::status(&parts.headers);
                }
                Ok(Response::from_parts(parts, body))
            }
            Err(failure) => {
                let client_gone = meter.as_ref().is_some_and(|m| m.failed());
                span.finish(Outcome {
                    status: Some(failure.status),
                    error: Some(if client_gone {
                        ErrorReason::DownstreamCancelled
                    } else {
                        failure.reason
                    }),
                    request_size: meter.as_ref().map_or(0, |m| m.bytes()),
                    ..Outcome::default()
                });
                Err(failure)
            }
        })
    }
}

/// A response body that ends its request's span: when it ends, fails, or is dropped.
#[derive(Debug)]
pub struct SpanBody<B: Body> {
    inner: B,
    span: Option<ActiveSpan>,
    status: StatusCode,
    meter: Option<Arc<Meter>>,
    response_size: u64,
    grpc_status: Option<u32>,
}

impl<B: Body> SpanBody<B> {
    /// Wraps `inner`, the body of a `status` response, to end `span` with it. `meter` is the
    /// request body's, for the request size.
    pub fn new(inner: B, span: ActiveSpan, status: StatusCode, meter: Option<Arc<Meter>>) -> Self {
        Self {
            inner,
            span: span.is_recording().then_some(span),
            status,
            meter,
            response_size: 0,
            grpc_status: None,
        }
    }

    fn end(&mut self, error: Option<ErrorReason>) {
        if let Some(span) = self.span.take() {
            span.finish(Outcome {
                status: Some(self.status),
                error,
                grpc_status: self.grpc_status,
                request_size: self.meter.as_ref().map_or(0, |m| m.bytes()),
                response_size: self.response_size,
            });
        }
    }
}

impl<B: Body> Drop for SpanBody<B> {
    fn drop(&mut self) {
        // hyper drops a body it knows is complete (a HEAD answer, a Content-Length reached)
        // without polling its end: that is a success. Any other drop is the client leaving.
        let error = (!self.inner.is_end_stream()).then_some(ErrorReason::DownstreamCancelled);
        self.end(error);
    }
}

impl<B> Body for SpanBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if self.span.is_none() {
            return polled;
        }
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.response_size += data.len() as u64;
                } else if let Some(trailers) = frame.trailers_ref() {
                    if let Some(code) = grpc::status(trailers) {
                        self.grpc_status = Some(code);
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => self.end(Some(ErrorReason::UpstreamReset)),
            // Ends the span now rather than when hyper drops the body.
            Poll::Ready(None) => self.end(None),
            Poll::Pending => {}
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
#[path = "layer_tests.rs"]
mod tests;
