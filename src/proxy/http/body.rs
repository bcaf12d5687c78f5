//! Request and response bodies as they stream through: counted (for the size metrics),
//! never buffered whole; the response body reports the request's end (metrics, access log)
//! when it ends, fails, or is dropped because the client went away.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::server::Finish;

/// How a response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Every byte reached the client.
    Complete,
    /// The app failed mid-response.
    UpstreamReset,
    /// The client went away mid-response.
    DownstreamGone,
}

/// A request body on its way to the app; its byte count lands in `total` when it ends (one
/// atomic store per request, none per chunk).
pub struct RequestBody {
    /// `None`: an empty body (a request replayed for a retry, which only bodiless requests
    /// get).
    inner: Option<Incoming>,
    bytes: u64,
    total: Arc<AtomicU64>,
}

impl RequestBody {
    pub fn new(inner: Incoming, total: Arc<AtomicU64>) -> RequestBody {
        RequestBody {
            inner: Some(inner),
            bytes: 0,
            total,
        }
    }

    /// An empty body.
    pub fn empty(total: Arc<AtomicU64>) -> RequestBody {
        RequestBody {
            inner: None,
            bytes: 0,
            total,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = ready!(Pin::new(inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    self.bytes += data.len() as u64;
                }
            }
            None | Some(Err(_)) => self.total.store(self.bytes, Ordering::Relaxed),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        self.total.store(self.bytes, Ordering::Relaxed);
    }
}

enum Inner {
    Upstream(Incoming),
    Local(Option<Bytes>),
}

/// A response body on its way to the client: the app's, or one the proxy made.
pub struct ResponseBody {
    inner: Inner,
    bytes: u64,
    grpc_status: Option<u32>,
    finish: Option<Finish>,
}

impl ResponseBody {
    /// A body the proxy answers with itself.
    pub fn local(bytes: Bytes) -> ResponseBody {
        // An empty body is over before it starts: hyper never polls it, and the request must
        // still be recorded as complete when it is dropped.
        let bytes = (!bytes.is_empty()).then_some(bytes);
        ResponseBody {
            inner: Inner::Local(bytes),
            bytes: 0,
            grpc_status: None,
            finish: None,
        }
    }

    /// The app's body; `grpc_status` from the response headers (a trailers-only answer).
    pub fn upstream(inner: Incoming, grpc_status: Option<u32>) -> ResponseBody {
        ResponseBody {
            inner: Inner::Upstream(inner),
            bytes: 0,
            grpc_status,
            finish: None,
        }
    }

    /// Reports the request's end through `finish` once the body ends.
    pub fn on_end(mut self, finish: Finish) -> ResponseBody {
        self.finish = Some(finish);
        self
    }

    fn end(&mut self, ending: Ending) {
        if let Some(finish) = self.finish.take() {
            finish.done(ending, self.bytes, self.grpc_status);
        }
    }
}

/// `grpc-status` as a number.
pub fn grpc_status(headers: &http::HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let frame = match &mut this.inner {
            Inner::Local(bytes) => bytes.take().map(|b| Ok(Frame::data(b))),
            Inner::Upstream(body) => ready!(Pin::new(body).poll_frame(cx)),
        };
        match &frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    this.bytes += data.len() as u64;
                } else if let Some(trailers) = f.trailers_ref() {
                    if let Some(status) = grpc_status(trailers) {
                        this.grpc_status = Some(status);
                    }
                }
            }
            Some(Err(_)) => this.end(Ending::UpstreamReset),
            None => this.end(Ending::Complete),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Local(bytes) => bytes.is_none(),
            Inner::Upstream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Local(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Inner::Local(None) => SizeHint::with_exact(0),
            Inner::Upstream(body) => body.size_hint(),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // hyper stops polling a body whose length it knows is reached; only a body with bytes
        // still to come was cut short by the client.
        let ending = if self.is_end_stream() {
            Ending::Complete
        } else {
            Ending::DownstreamGone
        };
        self.end(ending);
    }
}
