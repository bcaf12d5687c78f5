//! Which HTTP version a connection speaks, from its first bytes: the HTTP/2 connection
//! preface (prior knowledge, or `h2` after TLS), an HTTP/1 request line, or neither (then the
//! connection is closed and counted, never left hanging).

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The longest method token accepted before the first space.
const MAX_METHOD: usize = 32;

/// What the first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http1,
    Http2,
    /// Not HTTP at all.
    NotHttp,
    /// The client closed before saying anything.
    Closed,
    /// Nothing decisive before the deadline.
    TimedOut,
}

/// Decides from `buf`, or `None` when more bytes are needed.
pub fn classify(buf: &[u8]) -> Option<Version> {
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(Version::Http2);
    }
    for (i, &b) in buf.iter().enumerate() {
        if b == b' ' {
            return Some(if i > 0 {
                Version::Http1
            } else {
                Version::NotHttp
            });
        }
        if !is_tchar(b) || i >= MAX_METHOD {
            return Some(Version::NotHttp);
        }
    }
    None
}

/// RFC 9110 `tchar`: what a method token is made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Reads until the version is known (at most 24 bytes) or `deadline` passes; returns it
/// and the bytes read, to be replayed.
pub async fn read<R: AsyncRead + Unpin>(
    io: &mut R,
    deadline: Duration,
) -> io::Result<(Version, Vec<u8>)> {
    let mut buf = Vec::with_capacity(H2_PREFACE.len());
    let read = async {
        loop {
            let mut chunk = [0u8; 24];
            let want = H2_PREFACE.len().max(MAX_METHOD + 1) - buf.len();
            let n = io.read(&mut chunk[..want.min(24)]).await?;
            if n == 0 {
                return Ok(if buf.is_empty() {
                    Version::Closed
                } else {
                    Version::NotHttp
                });
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(v) = classify(&buf) {
                return Ok(v);
            }
        }
    };
    match tokio::time::timeout(deadline, read).await {
        Ok(Ok(v)) => Ok((v, buf)),
        Ok(Err(e)) => Err(e),
        Err(_) => Ok((Version::TimedOut, buf)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes_decide_the_version() {
        let table: &[(&[u8], Option<Version>)] = &[
            (b"GET / HTTP/1.1\r\n", Some(Version::Http1)),
            (b"POST", None),
            (b"M-SEARCH * HTTP/1.1", Some(Version::Http1)),
            (H2_PREFACE, Some(Version::Http2)),
            (b"PRI * HTTP/2", None),
            (b"PRI /x HTTP/1.1", Some(Version::Http1)),
            (b"\x16\x03\x01\x02\x00", Some(Version::NotHttp)),
            (b"SSH-2.0-OpenSSH_9.6\r\n", Some(Version::NotHttp)),
            (b" GET", Some(Version::NotHttp)),
            (&[b'A'; 40], Some(Version::NotHttp)),
        ];
        for (bytes, want) in table {
            assert_eq!(
                classify(bytes),
                *want,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[tokio::test]
    async fn a_silent_client_times_out_and_a_closed_one_is_closed() {
        let (client, mut server) = tokio::io::duplex(64);
        let (v, _) = read(&mut server, Duration::from_millis(20)).await.unwrap();
        assert_eq!(v, Version::TimedOut);
        drop(client);
        let (v, _) = read(&mut server, Duration::from_secs(5)).await.unwrap();
        assert_eq!(v, Version::Closed);
        let (mut client2, mut server2) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client2, b"GE")
            .await
            .unwrap();
        drop(client2);
        let (v, buf) = read(&mut server2, Duration::from_secs(5)).await.unwrap();
        assert_eq!((v, buf.as_slice()), (Version::NotHttp, &b"GE"[..]));
    }
}
