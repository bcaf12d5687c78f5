//! Protocol detection on an inbound connection: is the first thing the client sends a TLS
//! ClientHello (and does it ask for mesh mTLS by ALPN), plaintext, or nothing at all?
//!
//! The bytes read while deciding are kept and replayed to whichever path takes the
//! connection ([`Rewind`]), so the TLS terminator, the plaintext forwarder and the TLS
//! passthrough all see the stream from its first byte. Reading is capped in size and time: a
//! peer controls it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// Largest ClientHello we buffer (post-quantum key shares make them ~1.5 KiB; 16 KiB is one
/// full record and leaves room for large session tickets).
pub const MAX_CLIENT_HELLO: usize = 16 * 1024 + 5;

/// What the first bytes of a connection were.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detected {
    /// A TLS ClientHello; `mesh` when its ALPN asks for Istio/outrider mesh mTLS.
    Tls { mesh: bool, sni: Option<String> },
    /// Anything that is not TLS.
    Plaintext,
    /// The client sent nothing before the detection deadline (server-speaks-first protocols).
    Silent,
    /// The client closed before sending anything.
    Closed,
    /// It started like TLS but is not a well-formed ClientHello, or is larger than the cap,
    /// or stopped half-way until the deadline.
    Malformed,
}

/// ALPN values by which Istio and outrider mesh clients announce mTLS.
pub fn is_mesh_alpn(proto: &[u8]) -> bool {
    matches!(
        proto,
        b"istio" | b"istio-peer-exchange" | b"istio-http/1.0" | b"istio-http/1.1" | b"istio-h2"
    )
}

/// Reads from `io` until the first bytes decide the protocol. A client that sends nothing
/// for `first_bytes` is [`Detected::Silent`]; once bytes have arrived, the rest of a
/// ClientHello may take up to `whole` from the start (a segment retransmitted on a lossy link
/// must not turn a good handshake into a reset). Returns the decision and the bytes read (to
/// be replayed).
pub async fn detect<R: AsyncRead + Unpin>(
    io: &mut R,
    first_bytes: Duration,
    whole: Duration,
) -> io::Result<(Detected, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let start = tokio::time::Instant::now();
    let mut started = start + first_bytes;
    loop {
        match classify(&buf) {
            Partial::Done(d) => return Ok((d, buf)),
            Partial::NeedMore => {}
        }
        if buf.len() >= MAX_CLIENT_HELLO {
            return Ok((Detected::Malformed, buf));
        }
        let want = (MAX_CLIENT_HELLO - buf.len()).min(4096);
        let old = buf.len();
        buf.resize(old + want, 0);
        let read = tokio::time::timeout_at(started, io.read(&mut buf[old..])).await;
        match read {
            Err(_elapsed) => {
                buf.truncate(old);
                let d = if old == 0 {
                    Detected::Silent
                } else {
                    Detected::Malformed
                };
                return Ok((d, buf));
            }
            Ok(Err(e)) => return Err(e),
            Ok(Ok(0)) => {
                buf.truncate(old);
                let d = if old == 0 {
                    Detected::Closed
                } else {
                    Detected::Malformed
                };
                return Ok((d, buf));
            }
            Ok(Ok(n)) => {
                buf.truncate(old + n);
                started = start + whole.max(first_bytes);
            }
        }
    }
}

enum Partial {
    Done(Detected),
    NeedMore,
}

/// Classifies what has been read so far.
fn classify(buf: &[u8]) -> Partial {
    if buf.is_empty() {
        return Partial::NeedMore;
    }
    // TLS record: ContentType handshake (22), legacy version 3.x.
    if buf[0] != 0x16 {
        return Partial::Done(Detected::Plaintext);
    }
    if buf.len() < 3 {
        return Partial::NeedMore;
    }
    if buf[1] != 0x03 {
        return Partial::Done(Detected::Plaintext);
    }
    match handshake_message(buf) {
        Gathered::Complete(msg) => Partial::Done(parse_client_hello(&msg)),
        Gathered::NeedMore => Partial::NeedMore,
        Gathered::Bad => Partial::Done(Detected::Malformed),
    }
}

enum Gathered {
    Complete(Vec<u8>),
    NeedMore,
    Bad,
}

/// Concatenates handshake-record payloads until the first handshake message is complete.
fn handshake_message(buf: &[u8]) -> Gathered {
    let mut payload = Vec::new();
    let mut rest = buf;
    loop {
        if rest.len() < 5 {
            return Gathered::NeedMore;
        }
        if rest[0] != 0x16 || rest[1] != 0x03 {
            return Gathered::Bad;
        }
        let len = u16::from_be_bytes([rest[3], rest[4]]) as usize;
        if len == 0 || len > 16 * 1024 + 256 {
            return Gathered::Bad;
        }
        if rest.len() < 5 + len {
            return Gathered::NeedMore;
        }
        payload.extend_from_slice(&rest[5..5 + len]);
        rest = &rest[5 + len..];
        if payload.len() >= 4 {
            if payload[0] != 0x01 {
                return Gathered::Bad; // the first handshake message must be a ClientHello
            }
            let msg_len = u32::from_be_bytes([0, payload[1], payload[2], payload[3]]) as usize;
            if msg_len + 4 > MAX_CLIENT_HELLO {
                return Gathered::Bad;
            }
            if payload.len() >= msg_len + 4 {
                payload.truncate(msg_len + 4);
                return Gathered::Complete(payload);
            }
        }
    }
}

/// A bounds-checked reader over a byte slice.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| b[0] as usize)
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(n)
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(n)
    }
}

fn parse_client_hello(msg: &[u8]) -> Detected {
    fn parse(msg: &[u8]) -> Option<Detected> {
        let mut c = Cursor(msg.get(4..)?);
        c.take(2)?; // legacy_version
        c.take(32)?; // random
        c.vec8()?; // legacy_session_id
        c.vec16()?; // cipher_suites
        c.vec8()?; // legacy_compression_methods
        let mut mesh = false;
        let mut sni = None;
        if c.0.is_empty() {
            return Some(Detected::Tls { mesh, sni });
        }
        let mut exts = Cursor(c.vec16()?);
        while !exts.0.is_empty() {
            let ty = exts.u16()?;
            let mut body = Cursor(exts.vec16()?);
            match ty {
                // server_name
                0 => {
                    let mut list = Cursor(body.vec16()?);
                    while !list.0.is_empty() {
                        let name_type = list.u8()?;
                        let name = list.vec16()?;
                        if name_type == 0 {
                            sni = std::str::from_utf8(name).ok().map(str::to_string);
                        }
                    }
                }
                // application_layer_protocol_negotiation
                16 => {
                    let mut list = Cursor(body.vec16()?);
                    while !list.0.is_empty() {
                        if is_mesh_alpn(list.vec8()?) {
                            mesh = true;
                        }
                    }
                }
                _ => {}
            }
        }
        Some(Detected::Tls { mesh, sni })
    }
    parse(msg).unwrap_or(Detected::Malformed)
}

/// Whether the ClientHello at the start of `prefix` (the bytes [`detect`] read) offers
/// `proto` by ALPN: the inbound side picks the TLS configuration that can agree on it.
pub fn offers_alpn(prefix: &[u8], proto: &[u8]) -> bool {
    fn walk(msg: &[u8], proto: &[u8]) -> Option<bool> {
        let mut c = Cursor(msg.get(4..)?);
        c.take(2)?; // legacy_version
        c.take(32)?; // random
        c.vec8()?; // legacy_session_id
        c.vec16()?; // cipher_suites
        c.vec8()?; // legacy_compression_methods
        if c.0.is_empty() {
            return Some(false);
        }
        let mut exts = Cursor(c.vec16()?);
        while !exts.0.is_empty() {
            let ty = exts.u16()?;
            let mut body = Cursor(exts.vec16()?);
            if ty == 16 {
                let mut list = Cursor(body.vec16()?);
                while !list.0.is_empty() {
                    if list.vec8()? == proto {
                        return Some(true);
                    }
                }
            }
        }
        Some(false)
    }
    match handshake_message(prefix) {
        Gathered::Complete(msg) => walk(&msg, proto).unwrap_or(false),
        Gathered::NeedMore | Gathered::Bad => false,
    }
}

/// A stream that first replays bytes already read from it.
pub struct Rewind<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Rewind {
            prefix,
            pos: 0,
            inner,
        }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            if self.pos == self.prefix.len() {
                self.prefix = Vec::new(); // release the detection buffer
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
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
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello built by hand: one record, given extensions.
    fn client_hello(exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend([7u8; 32]);
        body.push(0); // session id
        body.extend([0, 2, 0x13, 0x01]); // one cipher suite
        body.extend([1, 0]); // null compression
        let mut ext_bytes = Vec::new();
        for (ty, data) in exts {
            ext_bytes.extend(ty.to_be_bytes());
            ext_bytes.extend((data.len() as u16).to_be_bytes());
            ext_bytes.extend(data);
        }
        body.extend((ext_bytes.len() as u16).to_be_bytes());
        body.extend(ext_bytes);
        let mut hs = vec![0x01];
        hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend(body);
        let mut rec = vec![0x16, 0x03, 0x01];
        rec.extend((hs.len() as u16).to_be_bytes());
        rec.extend(hs);
        rec
    }

    fn alpn(protos: &[&[u8]]) -> (u16, Vec<u8>) {
        let mut list = Vec::new();
        for p in protos {
            list.push(p.len() as u8);
            list.extend(*p);
        }
        let mut data = (list.len() as u16).to_be_bytes().to_vec();
        data.extend(list);
        (16, data)
    }

    fn sni(name: &str) -> (u16, Vec<u8>) {
        let mut entry = vec![0];
        entry.extend((name.len() as u16).to_be_bytes());
        entry.extend(name.as_bytes());
        let mut data = (entry.len() as u16).to_be_bytes().to_vec();
        data.extend(entry);
        (0, data)
    }

    fn run(bytes: &[u8]) -> Detected {
        match classify(bytes) {
            Partial::Done(d) => d,
            Partial::NeedMore => panic!("undecided"),
        }
    }

    #[test]
    fn an_offered_alpn_is_found_in_the_hello() {
        let hello = client_hello(&[
            sni("outbound_.80_._.age.default.svc.cluster.local"),
            alpn(&[b"outrider-h2", b"istio-peer-exchange", b"istio"]),
        ]);
        assert!(offers_alpn(&hello, b"outrider-h2"));
        assert!(!offers_alpn(&hello, b"h2"));
        let other = client_hello(&[alpn(&[b"istio"])]);
        assert!(!offers_alpn(&other, b"outrider-h2"));
        assert!(!offers_alpn(&client_hello(&[]), b"outrider-h2"));
        assert!(!offers_alpn(&hello[..hello.len() - 3], b"outrider-h2"));
    }

    #[test]
    fn mesh_alpn_is_detected() {
        let hello = client_hello(&[
            sni("outbound_.8080_._.age.default.svc.cluster.local"),
            alpn(&[b"istio-peer-exchange", b"istio"]),
        ]);
        assert_eq!(
            run(&hello),
            Detected::Tls {
                mesh: true,
                sni: Some("outbound_.8080_._.age.default.svc.cluster.local".into())
            }
        );
    }

    #[test]
    fn other_alpn_is_not_mesh() {
        let hello = client_hello(&[alpn(&[b"h2", b"http/1.1"])]);
        assert_eq!(
            run(&hello),
            Detected::Tls {
                mesh: false,
                sni: None
            }
        );
    }

    #[test]
    fn plaintext_http() {
        assert_eq!(run(b"GET / HTTP/1.1\r\n"), Detected::Plaintext);
    }

    #[test]
    fn partial_hello_needs_more_and_split_records_join() {
        let hello = client_hello(&[alpn(&[b"istio"])]);
        assert!(matches!(classify(&hello[..20]), Partial::NeedMore));
        // Split the handshake message across two records.
        let hs = &hello[5..];
        let (a, b) = hs.split_at(10);
        let mut two = vec![0x16, 0x03, 0x01];
        two.extend((a.len() as u16).to_be_bytes());
        two.extend(a);
        two.extend([0x16, 0x03, 0x01]);
        two.extend((b.len() as u16).to_be_bytes());
        two.extend(b);
        assert_eq!(
            run(&two),
            Detected::Tls {
                mesh: true,
                sni: None
            }
        );
    }

    #[test]
    fn garbage_after_tls_header_is_malformed() {
        assert_eq!(
            run(&[0x16, 0x03, 0x01, 0x00, 0x04, 0x02, 0, 0, 0]),
            Detected::Malformed
        );
        let mut truncated_ext = client_hello(&[alpn(&[b"istio"])]);
        let n = truncated_ext.len();
        truncated_ext[n - 6] = 0xff; // an ALPN entry claiming more bytes than present
        assert_eq!(run(&truncated_ext), Detected::Malformed);
    }

    #[tokio::test]
    async fn silent_client_times_out_and_rewind_replays() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let (d, bytes) = detect(
            &mut server,
            Duration::from_millis(50),
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        assert_eq!(d, Detected::Silent);
        assert!(bytes.is_empty());
        use tokio::io::AsyncWriteExt;
        client.write_all(b"hello").await.unwrap();
        let (d, bytes) = detect(
            &mut server,
            Duration::from_millis(50),
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        assert_eq!(d, Detected::Plaintext);
        let mut rewound = Rewind::new(bytes, server);
        client.write_all(b" world").await.unwrap();
        drop(client);
        let mut all = String::new();
        rewound.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "hello world");
    }

    /// A ClientHello whose second half arrives after the first-bytes deadline (a lost and
    /// retransmitted segment) is still a ClientHello; one that stops half-way until the whole
    /// deadline is malformed.
    #[tokio::test(start_paused = true)]
    async fn a_client_hello_that_has_started_gets_the_whole_deadline() {
        use tokio::io::AsyncWriteExt;
        let hello = client_hello(&[alpn(&[b"istio"])]);
        let (mut client, mut server) = tokio::io::duplex(4096);
        let (first, rest) = hello.split_at(7);
        client.write_all(first).await.unwrap();
        let late = rest.to_vec();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            client.write_all(&late).await.unwrap();
            client
        });
        let (d, bytes) = detect(
            &mut server,
            Duration::from_millis(500),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert_eq!(
            d,
            Detected::Tls {
                mesh: true,
                sni: None
            }
        );
        assert_eq!(bytes, hello);
        drop(writer.await.unwrap());

        let (mut client, mut server) = tokio::io::duplex(4096);
        client.write_all(first).await.unwrap();
        let started = tokio::time::Instant::now();
        let (d, _) = detect(
            &mut server,
            Duration::from_millis(500),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert_eq!(d, Detected::Malformed);
        assert!(started.elapsed() >= Duration::from_secs(10));
    }
}
