//! The TCP connection under the HTTP engine, still counted in `istio_tcp_*`: bytes are added
//! up locally and handed to the metrics in batches (every 256 KiB, or on the first read or
//! write 5 s after the last report) and at close: no shared atomic per read.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::metrics::ConnectionMetrics;

/// Bytes held back before they are reported.
const BATCH: u64 = 256 * 1024;
/// Longest time bytes are held back on a connection that keeps moving some.
const REPORT_EVERY: Duration = Duration::from_secs(5);

/// A downstream stream that counts what it carries.
pub struct Counted<S> {
    inner: S,
    metrics: ConnectionMetrics,
    received: u64,
    sent: u64,
    last_report: Instant,
}

impl<S> Counted<S> {
    pub fn new(inner: S, metrics: ConnectionMetrics) -> Counted<S> {
        Counted {
            inner,
            metrics,
            received: 0,
            sent: 0,
            last_report: Instant::now(),
        }
    }

    fn report_if_due(&mut self) {
        if self.received + self.sent >= BATCH || self.last_report.elapsed() >= REPORT_EVERY {
            self.report();
        }
    }

    fn report(&mut self) {
        self.metrics.add(self.received, self.sent);
        self.received = 0;
        self.sent = 0;
        self.last_report = Instant::now();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Metrics, Peer, Reporter, TcpLabels};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn sent_total(m: &Metrics) -> f64 {
        m.encode()
            .lines()
            .filter(|l| l.starts_with("istio_tcp_sent_bytes_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_are_reported_in_batches_after_a_while_and_at_close() {
        let m = Metrics::new(prometheus::Registry::new());
        let labels = TcpLabels {
            reporter: Reporter::Destination,
            source: Peer::unknown(),
            destination: Peer::unknown(),
            destination_service: "age".into(),
            destination_service_name: "age".into(),
            destination_service_namespace: "default".into(),
            security_policy: "mutual_tls",
        };
        let (a, mut b) = tokio::io::duplex(1024);
        let mut counted = Counted::new(a, m.tcp_connection(&labels, "inbound"));
        counted.write_all(b"hello").await.unwrap();
        assert_eq!(sent_total(&m), 0.0, "held back");
        tokio::time::advance(REPORT_EVERY).await;
        counted.write_all(b"!").await.unwrap();
        assert_eq!(sent_total(&m), 6.0, "reported once the interval passed");
        counted.write_all(b"bye").await.unwrap();
        drop(counted);
        assert_eq!(sent_total(&m), 9.0, "the rest at close");
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello!bye");
    }
}
