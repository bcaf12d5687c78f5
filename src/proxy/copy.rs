//! The copy loop: the hot path. Moves bytes both ways between two streams, propagates
//! half-close, counts bytes per connection, and reports the counts in batches.
//!
//! Both directions are polled by one future (no task per direction, no split lock). Each
//! direction owns one buffer that starts small (an idle or chatty connection costs little
//! memory) and doubles, up to a cap, each time a read fills it (a bulk stream soon moves
//! several TLS records per read and per write: tokio-rustls fills a read with every record
//! it has decrypted, so a 64 KiB buffer carries up to four records' plaintext per write).
//! Reading TLS in place from rustls' buffer was tried and dropped: one record per write,
//! four times the writes to the app on a bulk stream (see BENCHMARKS.md). How a stream is
//! read is its [`CopyStream`] type. Nothing is allocated per read, no lock or shared atomic
//! is touched per chunk, nothing is logged per packet. Metrics see the byte counts at most
//! every `report_every` while bytes move, and at close.
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
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// Tunables of the copy loop.
#[derive(Debug, Clone, Copy)]
pub struct CopyConfig {
    /// Bytes of a plain-reading direction's buffer when a connection starts.
    pub initial_buffer_size: usize,
    /// The most bytes a plain-reading direction's buffer grows to. 64 KiB: four full TLS
    /// records, so a bulk stream encrypts four records per read and sends them in one write.
    pub buffer_size: usize,
    /// Close after this long without a byte in either direction.
    pub idle_timeout: Duration,
    /// How often byte counts of a long-lived connection are reported.
    pub report_every: Duration,
}

impl Default for CopyConfig {
    fn default() -> Self {
        CopyConfig {
            initial_buffer_size: 1024,
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
    A: CopyStream,
    B: CopyStream,
    R: ByteReport + Unpin,
{
    let now = Instant::now();
    let mut copy = Bidirectional {
        a,
        b,
        a_to_b: Pump::new(A::filler(&config), Side::Downstream, Side::Upstream),
        b_to_a: Pump::new(B::filler(&config), Side::Upstream, Side::Downstream),
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

struct Bidirectional<'s, A: CopyStream, B: CopyStream, R: ByteReport> {
    a: &'s mut A,
    b: &'s mut B,
    a_to_b: Pump<A::Fill>,
    b_to_a: Pump<B::Fill>,
    timer: Pin<Box<Sleep>>,
    watch: Watch,
    config: CopyConfig,
    reported: (u64, u64),
    report: R,
}

impl<A: CopyStream, B: CopyStream, R: ByteReport> Bidirectional<'_, A, B, R> {
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
impl<A: CopyStream, B: CopyStream, R: ByteReport> Drop for Bidirectional<'_, A, B, R> {
    fn drop(&mut self) {
        let _ = self.flush_report();
    }
}

impl<A, B, R> Future for Bidirectional<'_, A, B, R>
where
    A: CopyStream,
    B: CopyStream,
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

/// A stream the copy loop can carry, and where a direction reading it keeps its bytes
/// ([`OwnBuffer`] for every stream today).
pub trait CopyStream: AsyncWrite + Unpin + Sized {
    type Fill: Fill<Self> + Unpin;
    fn filler(config: &CopyConfig) -> Self::Fill;
}

/// Where one direction's bytes wait between the read and the write.
pub trait Fill<R> {
    /// The bytes read and not yet written, reading more when there are none; empty at end
    /// of stream.
    fn poll_fill<'a>(
        &'a mut self,
        cx: &mut Context<'_>,
        reader: &'a mut R,
    ) -> Poll<io::Result<&'a [u8]>>;
    /// `n` of those bytes were written.
    fn consume(&mut self, reader: &mut R, n: usize);
}

/// The copy loop's own buffer for a direction: starts at `initial_buffer_size` and doubles
/// on full reads up to `buffer_size`.
pub struct OwnBuffer {
    buf: Box<[u8]>,
    max: usize,
    pos: usize,
    filled: usize,
}

impl OwnBuffer {
    pub fn new(config: &CopyConfig) -> OwnBuffer {
        let max = config.buffer_size.max(1);
        OwnBuffer {
            buf: vec![0; config.initial_buffer_size.clamp(1, max)].into_boxed_slice(),
            max,
            pos: 0,
            filled: 0,
        }
    }
}

impl<R: AsyncRead + Unpin> Fill<R> for OwnBuffer {
    fn poll_fill<'a>(
        &'a mut self,
        cx: &mut Context<'_>,
        reader: &'a mut R,
    ) -> Poll<io::Result<&'a [u8]>> {
        if self.pos == self.filled {
            let mut rb = ReadBuf::new(&mut self.buf);
            ready!(Pin::new(reader).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            self.pos = 0;
            self.filled = n;
            if n == self.buf.len() && n < self.max {
                // A full read: more is probably waiting. Grow now, keeping the bytes just
                // read; this happens a few times per connection at most.
                let mut bigger = vec![0; (n * 2).min(self.max)].into_boxed_slice();
                bigger[..n].copy_from_slice(&self.buf[..n]);
                self.buf = bigger;
            }
        }
        Poll::Ready(Ok(&self.buf[self.pos..self.filled]))
    }

    fn consume(&mut self, _reader: &mut R, n: usize) {
        self.pos += n;
    }
}

impl CopyStream for TcpStream {
    type Fill = OwnBuffer;
    fn filler(config: &CopyConfig) -> OwnBuffer {
        OwnBuffer::new(config)
    }
}

impl CopyStream for tokio::io::DuplexStream {
    type Fill = OwnBuffer;
    fn filler(config: &CopyConfig) -> OwnBuffer {
        OwnBuffer::new(config)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> CopyStream for super::sniff::Rewind<S> {
    type Fill = OwnBuffer;
    fn filler(config: &CopyConfig) -> OwnBuffer {
        OwnBuffer::new(config)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> CopyStream for tokio_rustls::server::TlsStream<IO> {
    type Fill = OwnBuffer;
    fn filler(config: &CopyConfig) -> OwnBuffer {
        OwnBuffer::new(config)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> CopyStream for tokio_rustls::client::TlsStream<IO> {
    type Fill = OwnBuffer;
    fn filler(config: &CopyConfig) -> OwnBuffer {
        OwnBuffer::new(config)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> CopyStream for Box<tokio_rustls::client::TlsStream<IO>> {
    type Fill = OwnBuffer;
    fn filler(config: &CopyConfig) -> OwnBuffer {
        OwnBuffer::new(config)
    }
}

/// One direction: take what the reader has, write it all out, repeat; on end of stream, shut
/// down the writer's sending half (half-close).
struct Pump<F> {
    fill: F,
    total: u64,
    read_done: bool,
    done: bool,
    needs_flush: bool,
    reader_side: Side,
    writer_side: Side,
}

impl<F> Pump<F> {
    fn new(fill: F, reader_side: Side, writer_side: Side) -> Self {
        Pump {
            fill,
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
        F: Fill<RD>,
        WR: AsyncWrite + Unpin,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        while !self.read_done {
            let data = match self.fill.poll_fill(cx, reader) {
                Poll::Ready(Ok(data)) => data,
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
            };
            if data.is_empty() {
                self.read_done = true;
                break;
            }
            let n = ready!(Pin::new(&mut *writer).poll_write(cx, data))
                .map_err(|e| (self.writer_side, e))?;
            if n == 0 {
                let e = io::Error::new(io::ErrorKind::WriteZero, "peer stopped accepting bytes");
                return Poll::Ready(Err((self.writer_side, e)));
            }
            self.fill.consume(reader, n);
            self.total += n as u64;
            self.needs_flush = true;
        }
        ready!(Pin::new(&mut *writer).poll_shutdown(cx)).map_err(|e| (self.writer_side, e))?;
        self.done = true;
        Poll::Ready(Ok(()))
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

    impl<S: AsyncRead + AsyncWrite + Unpin> CopyStream for CountingReads<S> {
        type Fill = OwnBuffer;
        fn filler(config: &CopyConfig) -> OwnBuffer {
            OwnBuffer::new(config)
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
