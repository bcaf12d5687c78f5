//! `outrider capture-echo`: a probe for capture rules. It answers every connection, HTTP or
//! not, with one line: the address the connection was accepted on, its original destination
//! (`SO_ORIGINAL_DST`) and the peer. Listening on the capture ports (15001, 15006) in a
//! captured namespace, `outrider fetch http://<some ip>:<port>/` shows whether the rules sent
//! the connection there and where it was headed; the tests use it the same way.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use super::{original_dst, CaptureError};

/// The most of a request that is read before answering.
const MAX_REQUEST: usize = 4096;

/// One `outrider capture-echo`.
#[derive(Debug, Clone)]
pub struct EchoOptions {
    /// Where to listen (all bound before any is served).
    pub listen: Vec<SocketAddr>,
}

impl EchoOptions {
    /// Binds every address, says so on stdout (one `listening on <addr>` line each), then
    /// answers connections until the process is stopped.
    pub fn run(self) -> Result<(), CaptureError> {
        let mut listeners = Vec::new();
        for addr in &self.listen {
            let listener = TcpListener::bind(addr).map_err(|source| CaptureError::Bind {
                addr: *addr,
                source,
            })?;
            listeners.push(listener);
        }
        for listener in &listeners {
            if let Ok(addr) = listener.local_addr() {
                println!("listening on {addr}");
            }
        }
        std::thread::scope(|scope| {
            for listener in &listeners {
                scope.spawn(move || {
                    for stream in listener.incoming().flatten() {
                        std::thread::spawn(move || answer(stream));
                    }
                });
            }
        });
        Ok(())
    }
}

/// The line a connection is answered with.
pub fn describe(stream: &TcpStream) -> String {
    let show = |addr: std::io::Result<SocketAddr>| match addr {
        Ok(addr) => addr.to_string(),
        Err(err) => format!("({err})"),
    };
    format!(
        "local={} original={} peer={}",
        show(stream.local_addr()),
        show(original_dst(stream)),
        show(stream.peer_addr())
    )
}

/// Reads what the client sends first (an HTTP request head, or whatever arrives within a
/// short wait), then answers as HTTP/1.1 and closes.
fn answer(mut stream: TcpStream) {
    let line = describe(&stream);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut request = [0u8; MAX_REQUEST];
    let mut read = 0;
    while read < request.len() {
        match stream.read(&mut request[read..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => read += n,
        }
        if request[..read].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let body = format!("{line}\n");
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
}
