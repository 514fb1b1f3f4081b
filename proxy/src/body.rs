//! Body wrappers that count bytes as they stream through and end the request's span when the
//! response is done. Neither buffers: each frame is passed on as soon as it arrives.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use prometheus_client::metrics::counter::Counter;

use crate::trace::{ActiveSpan, Outcome};

/// The request body on its way upstream.
#[derive(Debug)]
pub struct RequestBody {
    inner: Incoming,
    received: Counter,
    /// Only allocated when the span records: the size is then reported by [`ResponseBody`].
    size: Option<Arc<AtomicU64>>,
}

impl RequestBody {
    pub fn new(inner: Incoming, received: Counter, size: Option<Arc<AtomicU64>>) -> Self {
        Self {
            inner,
            received,
            size,
        }
    }
}

fn data_len(frame: &Frame<Bytes>) -> u64 {
    frame.data_ref().map_or(0, |d| d.len() as u64)
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            let n = data_len(frame);
            self.received.inc_by(n);
            if let Some(size) = &self.size {
                size.fetch_add(n, Ordering::Relaxed);
            }
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

/// The response body on its way downstream; finishes the span when it ends or is dropped
/// (client gone), so the span covers the whole exchange.
#[derive(Debug)]
pub struct ResponseBody {
    inner: Incoming,
    sent: Counter,
    finish: Finish,
}

/// Ends a span exactly once, on drop.
#[derive(Debug)]
pub struct Finish {
    span: Option<ActiveSpan>,
    status: StatusCode,
    request_size: Option<Arc<AtomicU64>>,
    response_size: u64,
    error: Option<String>,
}

impl Finish {
    pub fn new(span: ActiveSpan, status: StatusCode, request_size: Option<Arc<AtomicU64>>) -> Self {
        Self {
            span: Some(span),
            status,
            request_size,
            response_size: 0,
            error: None,
        }
    }
}

impl Finish {
    fn end(&mut self) {
        if let Some(span) = self.span.take() {
            span.finish(Outcome {
                status: Some(self.status),
                error: self.error.take(),
                request_size: self
                    .request_size
                    .as_ref()
                    .map_or(0, |s| s.load(Ordering::Relaxed)),
                response_size: self.response_size,
            });
        }
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        self.end();
    }
}

impl ResponseBody {
    pub fn new(inner: Incoming, sent: Counter, finish: Finish) -> Self {
        Self {
            inner,
            sent,
            finish,
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                let n = data_len(frame);
                self.sent.inc_by(n);
                self.finish.response_size += n;
            }
            Poll::Ready(Some(Err(e))) => {
                self.finish.error = Some(format!("upstream response body: {e}"));
            }
            Poll::Ready(None) => {
                // Ends the span now rather than when hyper drops the body.
                self.finish.end();
            }
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
