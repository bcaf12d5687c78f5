//! The copy loop: the hot path. Moves bytes both ways between two streams, propagates
//! half-close, counts bytes per connection, and reports the counts in batches.
//!
//! Both directions are polled by one future (no task per direction, no split lock). Each
//! direction owns one buffer that starts small (an idle or chatty connection costs little
//! memory) and doubles, up to a cap, each time a read fills it (a bulk stream soon moves
//! several TLS records per read and per write); nothing is allocated per read, no lock or
//! shared atomic is touched per chunk, nothing is logged per packet. Metrics see the byte
//! counts only at each `report_every` tick and at close. Idle detection rides on the
//! same tick: a connection with no bytes moved for `idle_timeout` is closed.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Interval, MissedTickBehavior};

/// Tunables of the copy loop.
#[derive(Debug, Clone, Copy)]
pub struct CopyConfig {
    /// Bytes per direction when a connection starts.
    pub initial_buffer_size: usize,
    /// The most bytes per direction a buffer grows to. 64 KiB: four full TLS records, so a
    /// bulk stream encrypts four records per read and sends them in one write.
    pub buffer_size: usize,
    /// Close after this long without a byte in either direction.
    pub idle_timeout: Duration,
    /// How often byte counts of a long-lived connection are reported.
    pub report_every: Duration,
}

impl Default for CopyConfig {
    fn default() -> Self {
        CopyConfig {
            initial_buffer_size: 2 * 1024,
            buffer_size: 64 * 1024,
            idle_timeout: Duration::from_secs(3600),
            report_every: Duration::from_secs(5),
        }
    }
}

/// Which side of a proxied connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The side that connected to us (`a` in [`copy_bidirectional`]).
    Downstream,
    /// The side we connected to (`b`).
    Upstream,
}

/// How a copy ended.
#[derive(Debug)]
pub enum CopyEnd {
    /// Both directions reached end of stream.
    Done,
    /// No byte moved for the idle timeout.
    Idle,
    /// An I/O error on one side.
    Failed { side: Side, error: io::Error },
}

impl CopyEnd {
    /// How the copy ended, for the access log, naming the failed side as the caller calls
    /// its two sides (`downstream`/`upstream` on inbound, `app`/`upstream` on outbound).
    pub fn outcome(&self, downstream: &str, upstream: &str) -> String {
        match self {
            CopyEnd::Done => "done".to_string(),
            CopyEnd::Idle => "idle_timeout".to_string(),
            CopyEnd::Failed { side, error } => {
                let side = match side {
                    Side::Downstream => downstream,
                    Side::Upstream => upstream,
                };
                format!("{side} failed: {error}")
            }
        }
    }
}

/// Receives byte-count deltas: `a_to_b` are bytes read from downstream and written upstream.
pub trait ByteReport {
    fn report(&mut self, a_to_b: u64, b_to_a: u64);
}

impl<F: FnMut(u64, u64)> ByteReport for F {
    fn report(&mut self, a_to_b: u64, b_to_a: u64) {
        self(a_to_b, b_to_a)
    }
}

/// Copies `a → b` and `b → a` until both directions end, one fails, or the connection idles.
/// Returns how it ended and the total bytes `(a_to_b, b_to_a)`; all of them have been passed
/// to `report` by then.
pub async fn copy_bidirectional<A, B, R>(
    a: &mut A,
    b: &mut B,
    config: CopyConfig,
    report: R,
) -> (CopyEnd, u64, u64)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
    R: ByteReport + Unpin,
{
    let mut ticker =
        tokio::time::interval_at(Instant::now() + config.report_every, config.report_every);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut copy = Bidirectional {
        a,
        b,
        a_to_b: Pump::new(config, Side::Downstream, Side::Upstream),
        b_to_a: Pump::new(config, Side::Upstream, Side::Downstream),
        ticker,
        idle_ticks: 0,
        idle_limit: idle_ticks(config),
        reported: (0, 0),
        report,
    };
    let end = (&mut copy).await;
    let (ab, ba) = (copy.a_to_b.total, copy.b_to_a.total);
    copy.flush_report();
    (end, ab, ba)
}

fn idle_ticks(config: CopyConfig) -> u32 {
    let every = config.report_every.as_millis().max(1);
    (config.idle_timeout.as_millis().div_ceil(every)).clamp(1, u32::MAX as u128) as u32
}

struct Bidirectional<'s, A, B, R: ByteReport> {
    a: &'s mut A,
    b: &'s mut B,
    a_to_b: Pump,
    b_to_a: Pump,
    ticker: Interval,
    /// Consecutive ticks with no byte moved.
    idle_ticks: u32,
    idle_limit: u32,
    reported: (u64, u64),
    report: R,
}

impl<A, B, R: ByteReport> Bidirectional<'_, A, B, R> {
    fn flush_report(&mut self) {
        let delta = (
            self.a_to_b.total - self.reported.0,
            self.b_to_a.total - self.reported.1,
        );
        if delta != (0, 0) {
            self.report.report(delta.0, delta.1);
            self.reported = (self.a_to_b.total, self.b_to_a.total);
        }
    }
}

/// A copy dropped before it ended (its connection task was aborted: the listener was removed,
/// or the port's new mode refuses the connection) still reports its last bytes.
impl<A, B, R: ByteReport> Drop for Bidirectional<'_, A, B, R> {
    fn drop(&mut self) {
        self.flush_report();
    }
}

impl<A, B, R> Future for Bidirectional<'_, A, B, R>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
    R: ByteReport + Unpin,
{
    type Output = CopyEnd;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<CopyEnd> {
        let this = self.get_mut();
        let ab = this.a_to_b.poll_copy(cx, &mut *this.a, &mut *this.b);
        let ba = this.b_to_a.poll_copy(cx, &mut *this.b, &mut *this.a);
        match (ab, ba) {
            (Poll::Ready(Err((side, error))), _) | (_, Poll::Ready(Err((side, error)))) => {
                return Poll::Ready(CopyEnd::Failed { side, error })
            }
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => return Poll::Ready(CopyEnd::Done),
            _ => {}
        }
        while this.ticker.poll_tick(cx).is_ready() {
            let before = this.reported;
            this.flush_report();
            if this.reported == before {
                this.idle_ticks += 1;
                if this.idle_ticks >= this.idle_limit {
                    return Poll::Ready(CopyEnd::Idle);
                }
            } else {
                this.idle_ticks = 0;
            }
        }
        Poll::Pending
    }
}

/// One direction: read into the buffer, write it all out, repeat; on end of stream, shut
/// down the writer's sending half (half-close).
struct Pump {
    buf: Box<[u8]>,
    /// The size `buf` may grow to.
    max: usize,
    pos: usize,
    filled: usize,
    total: u64,
    read_done: bool,
    done: bool,
    needs_flush: bool,
    reader_side: Side,
    writer_side: Side,
}

impl Pump {
    fn new(config: CopyConfig, reader_side: Side, writer_side: Side) -> Self {
        let max = config.buffer_size.max(1);
        Pump {
            buf: vec![0; config.initial_buffer_size.clamp(1, max)].into_boxed_slice(),
            max,
            pos: 0,
            filled: 0,
            total: 0,
            read_done: false,
            done: false,
            needs_flush: false,
            reader_side,
            writer_side,
        }
    }

    fn poll_copy<RD, WR>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut RD,
        writer: &mut WR,
    ) -> Poll<Result<(), (Side, io::Error)>>
    where
        RD: AsyncRead + Unpin,
        WR: AsyncWrite + Unpin,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            // Refill when the buffer is drained.
            if self.pos == self.filled && !self.read_done {
                let mut rb = ReadBuf::new(&mut self.buf);
                match Pin::new(&mut *reader).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        if n == 0 {
                            self.read_done = true;
                        } else {
                            self.pos = 0;
                            self.filled = n;
                        }
                        if n == self.buf.len() && n < self.max {
                            // A full read: more is probably waiting. Grow now, keeping the
                            // bytes just read; this happens a few times per connection at most.
                            let mut bigger = vec![0; (n * 2).min(self.max)].into_boxed_slice();
                            bigger[..n].copy_from_slice(&self.buf[..n]);
                            self.buf = bigger;
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err((self.reader_side, e))),
                    Poll::Pending => {
                        // Nothing more to read right now: push out what was written.
                        if self.needs_flush {
                            ready!(Pin::new(&mut *writer).poll_flush(cx))
                                .map_err(|e| (self.writer_side, e))?;
                            self.needs_flush = false;
                        }
                        return Poll::Pending;
                    }
                }
            }
            // Drain the buffer.
            while self.pos < self.filled {
                let n =
                    ready!(Pin::new(&mut *writer).poll_write(cx, &self.buf[self.pos..self.filled]))
                        .map_err(|e| (self.writer_side, e))?;
                if n == 0 {
                    let e =
                        io::Error::new(io::ErrorKind::WriteZero, "peer stopped accepting bytes");
                    return Poll::Ready(Err((self.writer_side, e)));
                }
                self.pos += n;
                self.total += n as u64;
                self.needs_flush = true;
            }
            if self.read_done {
                ready!(Pin::new(&mut *writer).poll_shutdown(cx))
                    .map_err(|e| (self.writer_side, e))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn copies_both_ways_with_half_close_and_reports_totals() {
        let (mut client, mut a) = tokio::io::duplex(1024);
        let (mut b, mut server) = tokio::io::duplex(1024);
        let mut reports = Vec::new();
        let proxy = tokio::spawn(async move {
            let (end, ab, ba) = copy_bidirectional(
                &mut a,
                &mut b,
                CopyConfig {
                    initial_buffer_size: 3,
                    buffer_size: 7,
                    ..Default::default()
                },
                |x, y| reports.push((x, y)),
            )
            .await;
            (end, ab, ba, reports)
        });
        let payload = vec![42u8; 100_000];
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap(); // sees EOF: half-close propagated
        assert_eq!(got, payload);
        server.write_all(b"bye").await.unwrap(); // the other direction still works
        server.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"bye");
        let (end, ab, ba, reports) = proxy.await.unwrap();
        assert!(matches!(end, CopyEnd::Done), "{end:?}");
        assert_eq!((ab, ba), (100_000, 3));
        let summed = reports
            .iter()
            .fold((0, 0), |acc, r| (acc.0 + r.0, acc.1 + r.1));
        assert_eq!(summed, (100_000, 3));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connection_is_closed() {
        let (_client, mut a) = tokio::io::duplex(64);
        let (mut b, _server) = tokio::io::duplex(64);
        let config = CopyConfig {
            idle_timeout: Duration::from_secs(10),
            report_every: Duration::from_secs(1),
            ..Default::default()
        };
        let (end, _, _) = copy_bidirectional(&mut a, &mut b, config, |_, _| {}).await;
        assert!(matches!(end, CopyEnd::Idle));
    }
}
