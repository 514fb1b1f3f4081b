//! Body wrappers that count bytes for `/metrics` as they stream through. Neither buffers:
//! each frame is passed on as soon as it arrives. The span's view of the same bodies (sizes,
//! end, failure) is [`crate::trace::layer`]'s.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use prometheus_client::metrics::counter::Counter;

use crate::h2_pool::InFlight;
use crate::half_close::BodyOpen;
use crate::trace::layer::{Measured, Meter};

/// The request body on its way upstream.
#[derive(Debug)]
pub struct RequestBody {
    inner: Incoming,
    received: Counter,
    /// Attached by the tracing layer when the request's span records.
    meter: Option<Arc<Meter>>,
    /// Held until the body has been read to its end (see [`crate::half_close`]).
    open: Option<BodyOpen>,
}

impl RequestBody {
    pub fn new(inner: Incoming, received: Counter) -> Self {
        Self {
            inner,
            received,
            meter: None,
            open: None,
        }
    }

    /// Holds `open` until the body is read to its end or fails, so a client's EOF in the
    /// middle of the body is not taken for a half-close.
    pub fn holding(mut self, open: Option<BodyOpen>) -> Self {
        self.open = if self.inner.is_end_stream() {
            None
        } else {
            open
        };
        self
    }
}

impl Measured for RequestBody {
    fn measure(&mut self, meter: Arc<Meter>) {
        self.meter = Some(meter);
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
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                let n = data_len(frame);
                self.received.inc_by(n);
                if let Some(meter) = &self.meter {
                    meter.add(n);
                }
                if self.inner.is_end_stream() {
                    self.open = None;
                }
            }
            Poll::Ready(Some(Err(_))) => {
                self.open = None;
                if let Some(meter) = &self.meter {
                    meter.fail();
                }
            }
            Poll::Ready(None) => self.open = None,
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

/// The response body on its way downstream.
#[derive(Debug)]
pub struct ResponseBody {
    inner: Incoming,
    sent: Counter,
    /// The HTTP/2 upstream stream it comes from, counted against its connection until the
    /// body is dropped (see [`crate::h2_pool`]).
    _stream: Option<InFlight>,
}

impl ResponseBody {
    pub fn new(inner: Incoming, sent: Counter) -> Self {
        Self {
            inner,
            sent,
            _stream: None,
        }
    }

    /// Holds `stream` as long as the body.
    pub fn holding(mut self, stream: Option<InFlight>) -> Self {
        self._stream = stream;
        self
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
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            self.sent.inc_by(data_len(frame));
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
