//! The TCP connection under the HTTP engine, still counted in `istio_tcp_*`: bytes are added
//! up locally and handed to the metrics in batches and at close (no shared atomic per read).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::metrics::ConnectionMetrics;

/// Bytes held back before they are reported.
const BATCH: u64 = 256 * 1024;

/// A downstream stream that counts what it carries.
pub struct Counted<S> {
    inner: S,
    metrics: ConnectionMetrics,
    received: u64,
    sent: u64,
}

impl<S> Counted<S> {
    pub fn new(inner: S, metrics: ConnectionMetrics) -> Counted<S> {
        Counted {
            inner,
            metrics,
            received: 0,
            sent: 0,
        }
    }

    fn report_if_due(&mut self) {
        if self.received + self.sent >= BATCH {
            self.report();
        }
    }

    fn report(&mut self) {
        self.metrics.add(self.received, self.sent);
        self.received = 0;
        self.sent = 0;
    }
}

impl<S> Drop for Counted<S> {
    fn drop(&mut self) {
        self.report();
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            self.received += (buf.filled().len() - before) as u64;
            self.report_if_due();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.sent += n as u64;
            self.report_if_due();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            self.sent += n as u64;
            self.report_if_due();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
