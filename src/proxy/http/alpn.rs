//! Which inbound TLS configuration a ClientHello gets.
//!
//! A server configuration that lists ALPN values refuses a client whose list shares none of
//! them (rustls answers `no_application_protocol`), so the sidecar keeps its ALPN-less mesh
//! configuration for everyone and picks an ALPN-speaking twin only for a client on an HTTP port
//! that asks for what the twin offers: the pooled HTTP/2 of another outrider sidecar
//! ([`super::pool::ALPN`]), or `h2`/`http/1.1` from a client holding a mesh certificate (curl,
//! a gRPC library), which then speaks HTTP/2 when both can.

use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

use super::pool::ALPN as POOLED_H2;
use crate::config::Protocol;
use crate::proxy::sniff::offers_alpn;

/// The inbound TLS configurations of one listener.
#[derive(Clone)]
pub struct Acceptors {
    /// No ALPN: mesh clients, TCP ports.
    mesh: TlsAcceptor,
    /// Agrees on pooled HTTP/2 between sidecars.
    pooled: TlsAcceptor,
    /// Agrees on `h2`, else `http/1.1`.
    http: TlsAcceptor,
}

impl Acceptors {
    pub fn new(mesh: TlsAcceptor) -> Acceptors {
        Acceptors {
            pooled: with_alpn(&mesh, &[POOLED_H2]),
            http: with_alpn(&mesh, &[b"h2", b"http/1.1"]),
            mesh,
        }
    }

    /// The configuration for the ClientHello at the start of `prefix` on a port of
    /// `protocol`.
    pub fn pick(&self, prefix: &[u8], protocol: Protocol) -> &TlsAcceptor {
        if !protocol.is_http() {
            &self.mesh
        } else if offers_alpn(prefix, POOLED_H2) {
            &self.pooled
        } else if offers_alpn(prefix, b"h2") || offers_alpn(prefix, b"http/1.1") {
            &self.http
        } else {
            &self.mesh
        }
    }
}

fn with_alpn(tls: &TlsAcceptor, alpn: &[&[u8]]) -> TlsAcceptor {
    let mut config = (**tls.config()).clone();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsAcceptor::from(Arc::new(config))
}
