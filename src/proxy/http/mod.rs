//! The L7 engine: HTTP/1.1 and HTTP/2 on ports declared `HTTP`, `HTTP2` or `GRPC`.
//!
//! Inbound, after the connection is admitted (mTLS terminated, or plaintext where the mode
//! allows it), [`serve_inbound`] reads the first bytes to learn the HTTP version (or close a
//! client that does not speak HTTP), then serves requests with hyper: each is authenticated
//! (RequestAuthentication's JWTs), authorized (AuthorizationPolicy), gets its `x-forwarded-client-cert` ([`xfcc`]), loses its hop-by-hop
//! headers ([`headers`]) and goes to the app over a keep-alive pool ([`upstream`]). Bodies
//! stream both ways ([`body`]); upgrades and `CONNECT` become raw tunnels. Each request is
//! counted in Istio's request metrics and logged once (target `access`) when its response
//! ends; the TCP connection underneath still counts in `istio_tcp_*` ([`io`]).

pub mod alpn;
pub mod body;
pub mod flags;
pub mod headers;
pub mod inbound;
pub mod io;
pub mod outbound;
pub mod pool;
pub mod preface;
pub mod route;
pub mod server;
pub mod upstream;
pub mod xfcc;

use std::net::SocketAddr;
use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};

use super::sniff::Rewind;
use super::{Runtime, Shared};
use crate::config::{InboundPlan, Protocol};
use crate::identity::SpiffeId;
use crate::metrics::{Peer, Reporter, TcpLabels};

pub use upstream::AppClients;

/// What the inbound path knows about an admitted downstream connection.
pub struct Downstream {
    /// The client's address.
    pub peer: SocketAddr,
    /// The address it connected to.
    pub local: SocketAddr,
    /// The client as the metrics name it.
    pub source: Peer,
    /// `mutual_tls` or `none`.
    pub security: &'static str,
    /// The verified client identity (mTLS only).
    pub peer_id: Option<SpiffeId>,
    /// The client's leaf certificate (mTLS only), for XFCC.
    pub leaf: Option<CertificateDer<'static>>,
    pub sni: Option<String>,
}

/// Serves one admitted inbound connection on an HTTP port until it closes.
pub async fn serve_inbound<S>(
    mut io: S,
    downstream: Downstream,
    plan: &InboundPlan,
    app: SocketAddr,
    rt: &Runtime,
    shared: &Shared,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (version, prefix) = match preface::read(&mut io, server::PREFACE_TIMEOUT).await {
        Ok(read) => read,
        Err(e) => {
            tracing::debug!(peer = %downstream.peer, port = plan.port, error = %e, "downstream failed before its first request");
            return;
        }
    };
    let http2 = match version {
        preface::Version::Http1 => false,
        preface::Version::Http2 => true,
        preface::Version::Closed => return,
        preface::Version::NotHttp | preface::Version::TimedOut => {
            let reason = if version == preface::Version::NotHttp {
                "not_http"
            } else {
                "http_header_timeout"
            };
            shared.metrics.inbound_rejected(plan.port, reason);
            tracing::info!(peer = %downstream.peer, port = plan.port, reason, "closed: not an HTTP client on an HTTP port");
            return;
        }
    };
    let w = &rt.plan.workload;
    let labels = TcpLabels {
        reporter: Reporter::Destination,
        source: downstream.source.clone(),
        destination: rt.me.clone(),
        destination_service: format!("{}.{}.svc.cluster.local", w.service, w.namespace),
        destination_service_name: w.service.clone(),
        destination_service_namespace: w.namespace.clone(),
        security_policy: downstream.security,
    };
    let tcp = shared.metrics.tcp_connection(&labels, "inbound");
    let xfcc_own = downstream
        .leaf
        .as_ref()
        .map(|leaf| xfcc::element(&w.spiffe_id.to_string(), &xfcc::ClientCert::from_leaf(leaf)));
    let http2_app = matches!(plan.protocol, Protocol::Http2 | Protocol::Grpc);
    let tunnels = Arc::new(server::Tunnels::default());
    let peer = downstream.peer;
    let conn = Arc::new(inbound::Conn {
        port: plan.port,
        local: downstream.local,
        peer_id: downstream.peer_id,
        sni: downstream.sni,
        log: server::LogContext {
            direction: "inbound",
            peer,
            listener: plan.port.to_string().into(),
            principal: downstream.source.principal.as_str().into(),
        },
        authorization: plan.authorization.clone(),
        authentication: plan.authentication.clone(),
        metrics: shared.metrics.clone(),
        xfcc_mode: rt.plan.forward_client_cert,
        xfcc_own,
        client: shared
            .http
            .get(app, http2_app, shared.settings.connect_timeout),
        http2_app,
        meter: server::Meter::new(shared.metrics.request_labels(&labels)),
        tunnels: tunnels.clone(),
    });
    let io = io::Counted::new(Rewind::new(prefix, io), tcp);
    let draining = shared.shutdown.watch();
    server::serve(io, http2, tunnels, peer, draining, move |req| {
        inbound::handle(conn.clone(), req)
    })
    .await;
}
