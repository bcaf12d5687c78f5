//! The address a captured connection was headed for before nat `REDIRECT` sent it to the
//! proxy: `SO_ORIGINAL_DST` (`SOL_IP`, IPv4) or `IP6T_SO_ORIGINAL_DST` (`SOL_IPV6`), read from
//! conntrack through socket2 (no `unsafe` here), as Envoy's `original_dst` listener filter does.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;

use socket2::SockRef;

/// The original destination of an accepted, redirected connection (IPv4 or IPv6).
///
/// The family follows the connection, not the listener: a connection accepted on an IPv6
/// socket from an IPv4 peer (`::ffff:a.b.c.d`) was redirected by the IPv4 rules, so it is
/// asked with the IPv4 option. A connection that was not redirected still answers (conntrack
/// knows every connection): with the listener's own address.
pub fn original_dst<S: AsFd>(stream: &S) -> io::Result<SocketAddr> {
    let socket = SockRef::from(stream);
    let local = socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an IP socket"))?;
    let ipv4 = match local.ip() {
        IpAddr::V4(_) => true,
        IpAddr::V6(ip) => ip.to_ipv4_mapped().is_some(),
    };
    let addr = if ipv4 {
        socket.original_dst_v4()?
    } else {
        socket.original_dst_v6()?
    };
    addr.as_socket().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "the original destination is not an IP address",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::{TcpListener, TcpStream};

    #[test]
    fn an_unredirected_connection_reports_its_own_destination() {
        // Without nat rules conntrack still tracks the connection (where the conntrack module
        // is loaded): the original destination is the listener itself. Where it is not
        // loaded, the kernel says so with an error; both are fine here, a panic is not.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        match original_dst(&accepted) {
            Ok(dst) => assert_eq!(dst, addr),
            Err(err) => assert!(err.raw_os_error().is_some(), "{err}"),
        }
    }
}
