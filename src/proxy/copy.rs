//! The copy loop: the hot path. Moves bytes both ways between two streams, propagates
//! half-close, counts bytes per connection, and reports the counts in batches.
//!
//! Both directions are polled by one future (no task per direction, no split lock). Each
//! direction owns one buffer that starts small (an idle or chatty connection costs little
//! memory) and doubles, up to a cap, each time a read fills it (a bulk stream soon moves
//! several TLS records per read and per write); nothing is allocated per read, no lock or
//! shared atomic is touched per chunk, nothing is logged per packet. Metrics see the byte
//! counts at most every `report_every` while bytes move, and at close.
//!
//! One timer per connection serves both reporting and idle detection, and an idle connection
//! does not wake up: while bytes move, the timer fires every `report_every` to report them;
//! the first tick that finds nothing new moves the timer to the idle deadline, and the next
//! byte brings it back. A connection idle for hours costs one wake-up, not one per tick.
//! The idle deadline counts from the last tick that saw bytes move, so a connection closes
//! between `idle_timeout` and `idle_timeout + report_every` after its last byte.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

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
    let now = Instant::now();
    let mut copy = Bidirectional {
        a,
        b,
        a_to_b: Pump::new(config, Side::Downstream, Side::Upstream),
        b_to_a: Pump::new(config, Side::Upstream, Side::Downstream),
        timer: Box::pin(tokio::time::sleep_until(now + config.first_tick())),
        watch: Watch::Active { last_moved: now },
        config,
        reported: (0, 0),
        report,
    };
    let end = (&mut copy).await;
    let (ab, ba) = (copy.a_to_b.total, copy.b_to_a.total);
    let _ = copy.flush_report();
    (end, ab, ba)
}

impl CopyConfig {
    /// The first report tick; never later than the idle deadline.
    fn first_tick(&self) -> Duration {
        self.report_every.min(self.idle_timeout)
    }
}

/// What the connection's one timer is waiting for.
#[derive(Debug, Clone, Copy)]
enum Watch {
    /// Bytes moved recently: the timer is the next report tick. `last_moved` is the last tick
    /// (or the start) at which bytes were seen moving.
    Active { last_moved: Instant },
    /// A tick found nothing new: the timer is the idle deadline.
    Quiet,
}

struct Bidirectional<'s, A, B, R: ByteReport> {
    a: &'s mut A,
    b: &'s mut B,
    a_to_b: Pump,
    b_to_a: Pump,
    timer: Pin<Box<Sleep>>,
    watch: Watch,
    config: CopyConfig,
    reported: (u64, u64),
    report: R,
}

impl<A, B, R: ByteReport> Bidirectional<'_, A, B, R> {
    /// Reports the bytes moved since the last report; false if there were none.
    fn flush_report(&mut self) -> bool {
        let delta = (
            self.a_to_b.total - self.reported.0,
            self.b_to_a.total - self.reported.1,
        );
        if delta == (0, 0) {
            return false;
        }
        self.report.report(delta.0, delta.1);
        self.reported = (self.a_to_b.total, self.b_to_a.total);
        true
    }

    fn moved_since_report(&self) -> bool {
        (self.a_to_b.total, self.b_to_a.total) != self.reported
    }

    /// The timer fired: report, and decide what it waits for next. `Err` = idle too long.
    fn tick(&mut self, now: Instant) -> Result<(), ()> {
        let moved = self.flush_report();
        match self.watch {
            Watch::Active { .. } if moved => {
                self.watch = Watch::Active { last_moved: now };
                let next = now + self.config.first_tick();
                self.timer.as_mut().reset(next);
                Ok(())
            }
            Watch::Active { last_moved } => {
                let deadline = last_moved + self.config.idle_timeout;
                if deadline <= now {
                    return Err(());
                }
                self.watch = Watch::Quiet;
                self.timer.as_mut().reset(deadline);
                Ok(())
            }
            // Bytes moving while quiet re-arm the report tick at once (see `poll`), so the
            // idle deadline passing means nothing moved since.
            Watch::Quiet => Err(()),
        }
    }
}

/// A copy dropped before it ended (its connection task was aborted: the listener was removed,
/// or the port's new mode refuses the connection) still reports its last bytes.
impl<A, B, R: ByteReport> Drop for Bidirectional<'_, A, B, R> {
    fn drop(&mut self) {
        let _ = self.flush_report();
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
        if matches!(this.watch, Watch::Quiet) && this.moved_since_report() {
            // Awake again after a quiet spell: back to reporting every `report_every`.
            let now = Instant::now();
            this.watch = Watch::Active { last_moved: now };
            this.timer.as_mut().reset(now + this.config.first_tick());
        }
        while this.timer.as_mut().poll(cx).is_ready() {
            if this.tick(Instant::now()).is_err() {
                return Poll::Ready(CopyEnd::Idle);
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

    /// Counts how often the copy loop polls it for bytes: each poll is a wake-up.
    struct CountingReads<S> {
        inner: S,
        reads: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl<S: AsyncRead + Unpin> AsyncRead for CountingReads<S> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.reads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl<S: AsyncWrite + Unpin> AsyncWrite for CountingReads<S> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    /// An idle connection is not woken once per report tick: over 1,000 ticks of silence it
    /// is polled a handful of times (before: once per tick).
    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_does_not_wake_per_tick() {
        let reads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (mut client, a) = tokio::io::duplex(64);
        let mut a = CountingReads {
            inner: a,
            reads: reads.clone(),
        };
        let (mut b, _server) = tokio::io::duplex(64);
        let config = CopyConfig {
            idle_timeout: Duration::from_secs(1000),
            report_every: Duration::from_secs(1),
            ..Default::default()
        };
        let started = Instant::now();
        let copy = tokio::spawn(async move {
            let mut reports = 0;
            let (end, _, _) = copy_bidirectional(&mut a, &mut b, config, |_, _| reports += 1).await;
            (end, reports)
        });
        client.write_all(b"x").await.unwrap();
        let (end, reports) = copy.await.unwrap();
        assert!(matches!(end, CopyEnd::Idle), "{end:?}");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(1000) && waited <= Duration::from_secs(1001),
            "closed after {waited:?}"
        );
        assert_eq!(reports, 1);
        let polled = reads.load(std::sync::atomic::Ordering::Relaxed);
        assert!(polled <= 6, "polled {polled} times in 1000 s of silence");
        drop(client);
    }

    /// The idle timeout counts from the last bytes (to within one report tick), and bytes
    /// after a quiet spell start the count again.
    #[tokio::test(start_paused = true)]
    async fn idle_timeout_counts_from_the_last_bytes() {
        let (mut client, mut a) = tokio::io::duplex(64);
        let (mut b, mut server) = tokio::io::duplex(64);
        let config = CopyConfig {
            idle_timeout: Duration::from_secs(10),
            report_every: Duration::from_secs(1),
            ..Default::default()
        };
        let started = Instant::now();
        let copy = tokio::spawn(async move {
            let mut total = (0, 0);
            let (end, _, _) = copy_bidirectional(&mut a, &mut b, config, |x, y| {
                total = (total.0 + x, total.1 + y)
            })
            .await;
            (end, total)
        });
        let mut byte = [0u8; 1];
        // Bytes at 0 s, 3 s (after the loop went quiet at 2 s) and 12.5 s.
        for at in [0.0, 3.0, 12.5] {
            tokio::time::sleep_until(started + Duration::from_secs_f64(at)).await;
            client.write_all(b"x").await.unwrap();
            server.read_exact(&mut byte).await.unwrap();
        }
        let (end, total) = copy.await.unwrap();
        assert!(matches!(end, CopyEnd::Idle), "{end:?}");
        assert_eq!(total, (3, 0));
        let closed = started.elapsed();
        assert!(
            closed >= Duration::from_secs_f64(22.5) && closed <= Duration::from_secs_f64(23.5),
            "closed after {closed:?}"
        );
    }
}
