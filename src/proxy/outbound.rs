//! Outbound: one listener per `outbound` entry. The app connects in plaintext; the sidecar
//! picks an endpoint (weighted across routes, round-robin within a route, the next endpoint
//! when one fails), originates the TLS the plan says (ISTIO_MUTUAL with secure naming,
//! SIMPLE, MUTUAL, or none), and copies. An entry to an HTTP destination between sidecars is
//! served at L7 instead ([`super::http::outbound`]: requests over pooled HTTP/2).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rand::Rng;
use rustls::pki_types::{ServerName, UnixTime};
use rustls::HandshakeKind;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsConnector;

use super::copy::{copy_bidirectional, CopyStream};
use super::live::{Carried, LiveConnections};
use super::resolve::Target;
use super::{reset, tls_error, tune, Direction, Runtime, Shared};
use crate::config::Destination;
use crate::identity::{CertStore, PeerRole, SpiffeId};
use crate::metrics::{Metrics, Peer, Reporter, SeriesByPeer, TcpLabels, TcpSeries};

/// TLS to originate towards one endpoint, ready to use.
#[derive(Clone)]
pub enum UpstreamTls {
    Plain,
    Tls {
        connector: TlsConnector,
        server_name: ServerName<'static>,
        /// For ISTIO_MUTUAL (the peer is a mesh sidecar with an SVID): the store whose
        /// bundle a resumed session is checked against.
        mesh: Option<CertStore>,
    },
}

/// One endpoint as the data path uses it.
pub struct UpstreamEndpoint {
    pub host: String,
    pub port: u16,
    /// Where `host` points, resolved off the connection path.
    pub target: Target,
    pub tls: UpstreamTls,
    /// The workload behind the endpoint, as metrics name it.
    pub peer: Peer,
    /// Connection metrics by the server identity the handshake verified (`None`: plaintext).
    pub series: SeriesByPeer,
}

impl UpstreamEndpoint {
    /// The metric series of a connection of `out` through this endpoint to `server`.
    fn series(
        &self,
        metrics: &Metrics,
        out: &OutboundRuntime,
        me: &Peer,
        server: Option<&SpiffeId>,
    ) -> Arc<TcpSeries> {
        self.series.get(server, || {
            let mut destination = self.peer.clone();
            if let Some(id) = server {
                destination.principal = id.to_string();
            }
            let d = &out.destination;
            let labels = TcpLabels {
                reporter: Reporter::Source,
                source: me.clone(),
                destination,
                destination_service: d.host.clone(),
                destination_service_name: d.service.clone().unwrap_or_else(|| d.host.clone()),
                destination_service_namespace: d
                    .namespace
                    .clone()
                    .unwrap_or_else(|| crate::metrics::UNKNOWN.into()),
                security_policy: "unknown",
            };
            metrics.tcp_series(&labels, "outbound")
        })
    }
}

/// One weighted route.
pub struct UpstreamRoute {
    pub weight: u32,
    pub endpoints: Vec<UpstreamEndpoint>,
    next: AtomicUsize,
}

impl UpstreamRoute {
    pub fn new(weight: u32, endpoints: Vec<UpstreamEndpoint>) -> Self {
        UpstreamRoute {
            weight,
            endpoints,
            next: AtomicUsize::new(0),
        }
    }
}

/// One outbound entry, resolved.
pub struct OutboundRuntime {
    /// The entry's `bind` address, as configured.
    pub bind: SocketAddr,
    pub destination: Destination,
    pub routes: Vec<UpstreamRoute>,
}

impl OutboundRuntime {
    /// Picks a route by weight (routes of weight 0 never), then the endpoint order to try:
    /// round-robin start, then the others.
    pub(crate) fn pick(&self) -> Option<(&UpstreamRoute, usize)> {
        let total: u64 = self.routes.iter().map(|r| r.weight as u64).sum();
        let route = if total == 0 {
            self.routes.iter().find(|r| !r.endpoints.is_empty())?
        } else {
            let mut ticket = rand::rng().random_range(0..total);
            let mut chosen = None;
            for r in &self.routes {
                if ticket < r.weight as u64 {
                    chosen = Some(r);
                    break;
                }
                ticket -= r.weight as u64;
            }
            chosen?
        };
        if route.endpoints.is_empty() {
            return None;
        }
        let start = route.next.fetch_add(1, Ordering::Relaxed) % route.endpoints.len();
        Some((route, start))
    }
}

/// One bound outbound listener.
pub struct Outbound {
    listener: TcpListener,
    /// The `bind` address as configured: the key to this listener's plan entry (never its
    /// position, which a reload may change).
    bind: SocketAddr,
    live: Arc<LiveConnections>,
}

impl Outbound {
    pub async fn bind(bind: SocketAddr) -> std::io::Result<Outbound> {
        let listener = super::bind_listener(bind, "outbound").await?;
        Ok(Outbound {
            listener,
            bind,
            live: Arc::default(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// The `bind` address as configured (the key of its plan entry).
    pub fn bind_addr(&self) -> SocketAddr {
        self.bind
    }

    /// The connections this listener carries now.
    pub fn live(&self) -> Arc<LiveConnections> {
        self.live.clone()
    }

    /// Accepts until draining starts or `stop` turns true (the entry left the plan).
    pub async fn run(
        self,
        shared: Shared,
        runtime: watch::Receiver<Arc<Runtime>>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut draining = shared.shutdown.watch();
        loop {
            let Some((stream, peer)) =
                super::accept(&self.listener, &mut draining, &mut stop, "outbound").await
            else {
                return;
            };
            let Some(permits) = shared.permits(Direction::Outbound) else {
                shared
                    .metrics
                    .outbound_rejected(self.bind, "connection_limit");
                reset(stream);
                continue;
            };
            let rt = runtime.borrow().clone();
            let Some(out) = rt.outbound(self.bind) else {
                // The entry left the plan; this listener is being stopped.
                shared.metrics.outbound_rejected(self.bind, "not_in_plan");
                reset(stream);
                continue;
            };
            let shared = shared.clone();
            self.live.spawn(move |registration| async move {
                let _permits = permits;
                let _guard = shared.shutdown.connection();
                registration.decide(|| (Carried::Outbound, ()));
                if super::http::outbound::carries(&out) {
                    // Boxed: the L7 state would otherwise size every TCP connection's task.
                    Box::pin(super::http::outbound::serve(stream, peer, out, rt, shared)).await;
                } else {
                    serve(stream, peer, &out, &rt, &shared).await;
                }
            });
        }
    }
}

pub(super) async fn serve(
    app: TcpStream,
    peer: SocketAddr,
    out: &OutboundRuntime,
    rt: &Runtime,
    shared: &Shared,
) {
    tune(&app);
    if let Some(app) = carry(app, peer, out, rt, shared).await {
        // Every endpoint failed: the app sees its connection closed.
        reset(app);
    }
}

/// Carries a downstream byte stream to an endpoint of `out` (weighted route, endpoints
/// round-robin, the next one when a connection fails) and copies until both sides close.
/// Gives the stream back when no endpoint could be reached (the caller decides how to close
/// it); `None` once it was carried.
pub(crate) async fn carry<D: CopyStream>(
    mut app: D,
    peer: SocketAddr,
    out: &OutboundRuntime,
    rt: &Runtime,
    shared: &Shared,
) -> Option<D> {
    let service = out.destination.host.as_str();
    let Some((route, start)) = out.pick() else {
        shared.metrics.upstream_failed(service, "no_endpoint");
        tracing::warn!(%peer, destination = service, "no endpoint to send to");
        return Some(app);
    };
    let n = route.endpoints.len();
    for attempt in 0..n {
        let ep = &route.endpoints[(start + attempt) % n];
        // Boxed: the handshake's state (~2.4 KiB) would otherwise stay part of the connection's
        // future for as long as the connection is open.
        match Box::pin(connect(ep, shared)).await {
            Ok(Upstream::Plain(mut s)) => {
                copy_to(&mut app, &mut s, peer, ep, None, out, rt, shared).await;
                return None;
            }
            Ok(Upstream::Tls(mut s)) => {
                let server_id = s
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(crate::tls::peer_spiffe_id);
                tracing::debug!(
                    %peer,
                    destination = service,
                    handshake = ?s.get_ref().1.handshake_kind(),
                    "upstream TLS established"
                );
                copy_to(&mut app, &mut s, peer, ep, server_id, out, rt, shared).await;
                return None;
            }
            Err((reason, detail)) => {
                shared.metrics.upstream_failed(service, reason);
                tracing::warn!(
                    %peer,
                    destination = service,
                    endpoint = %format!("{}:{}", ep.host, ep.port),
                    side = "upstream",
                    reason,
                    error = %detail,
                    "upstream connection failed"
                );
            }
        }
    }
    Some(app)
}

enum Upstream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

async fn connect(
    ep: &UpstreamEndpoint,
    shared: &Shared,
) -> Result<Upstream, (&'static str, String)> {
    let UpstreamTls::Tls {
        connector,
        server_name,
        mesh,
    } = &ep.tls
    else {
        return Ok(Upstream::Plain(tcp_connect(ep, shared).await?));
    };
    // A resumed mesh session carries the server's certificate from its first handshake:
    // refused if that certificate expired or lost its root since; the ticket cache is then
    // empty, so one more attempt is a full handshake with the server's current certificate.
    for attempt in 0..2 {
        let tcp = tcp_connect(ep, shared).await?;
        let mut stream = tls_handshake(connector, server_name, tcp, shared).await?;
        let resumed = stream.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
        let Some(store) = mesh else {
            shared.metrics.handshake_completed("outbound", resumed);
            return Ok(Upstream::Tls(Box::new(stream)));
        };
        let checked =
            crate::tls::check_resumed(stream.get_ref().1, PeerRole::Server, store, UnixTime::now());
        match checked {
            Ok(()) => {
                shared.metrics.handshake_completed("outbound", resumed);
                return Ok(Upstream::Tls(Box::new(stream)));
            }
            Err(e) => {
                let reason = crate::tls::failure_reason(&e);
                // close_notify, then the socket closes with the stream.
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
                if attempt == 1 {
                    shared.metrics.handshake_failed("outbound", reason);
                    return Err(("tls_failed", format!("{reason}: {e}")));
                }
                shared.metrics.resumption_refused("outbound", reason);
                tracing::info!(
                    endpoint = %format!("{}:{}", ep.host, ep.port),
                    reason,
                    "resumed session refused; retrying with a full handshake"
                );
            }
        }
    }
    Err(("tls_failed", "resumed session refused twice".into()))
}

/// The TLS handshake towards an upstream, under the handshake deadline; failures counted.
pub(crate) async fn tls_handshake(
    connector: &TlsConnector,
    server_name: &ServerName<'static>,
    tcp: TcpStream,
    shared: &Shared,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, (&'static str, String)> {
    let handshake = tokio::time::timeout(
        shared.settings.handshake_timeout,
        connector.connect(server_name.clone(), tcp),
    )
    .await;
    match handshake {
        Err(_) => {
            shared.metrics.handshake_failed("outbound", "timeout");
            Err(("tls_timeout", "TLS handshake timed out".into()))
        }
        Ok(Err(e)) => {
            let reason = tls_error(&e)
                .map(crate::tls::failure_reason)
                .unwrap_or("io");
            shared.metrics.handshake_failed("outbound", reason);
            Err(("tls_failed", format!("{reason}: {e}")))
        }
        Ok(Ok(s)) => Ok(s),
    }
}

/// TCP connect to the endpoint: each resolved address in turn.
pub(crate) async fn tcp_connect(
    ep: &UpstreamEndpoint,
    shared: &Shared,
) -> Result<TcpStream, (&'static str, String)> {
    let addrs = shared
        .resolver
        .addrs(&ep.target, ep.port)
        .await
        .map_err(|e| ("resolve_failed", format!("cannot resolve {}: {e}", ep.host)))?;
    let mut last = ("connect_failed", format!("{} has no address", ep.host));
    for addr in addrs {
        match tokio::time::timeout(shared.settings.connect_timeout, TcpStream::connect(addr)).await
        {
            Ok(Ok(tcp)) => {
                tune(&tcp);
                return Ok(tcp);
            }
            Ok(Err(e)) => last = ("connect_failed", format!("{addr}: {e}")),
            Err(_) => last = ("connect_timeout", format!("{addr}: connect timed out")),
        }
    }
    Err(last)
}

#[allow(clippy::too_many_arguments)]
async fn copy_to<A: CopyStream, U: CopyStream>(
    app: &mut A,
    upstream: &mut U,
    peer: SocketAddr,
    ep: &UpstreamEndpoint,
    server_id: Option<SpiffeId>,
    out: &OutboundRuntime,
    rt: &Runtime,
    shared: &Shared,
) {
    let started = Instant::now();
    let d = &out.destination;
    let conn = ep
        .series(&shared.metrics, out, &rt.me, server_id.as_ref())
        .open();
    let (end, received, sent) =
        copy_bidirectional(app, upstream, shared.settings.copy, |rx, tx| {
            conn.add(rx, tx)
        })
        .await;
    let outcome = end.outcome("app", "upstream");
    let tls = match &ep.tls {
        UpstreamTls::Plain => "none",
        UpstreamTls::Tls { mesh: Some(_), .. } => "istio_mutual",
        UpstreamTls::Tls { .. } => "tls",
    };
    tracing::info!(
        target: "access",
        direction = "outbound",
        %peer,
        destination = %d.host,
        endpoint = %format!("{}:{}", ep.host, ep.port),
        server_principal = %server_id.map(|i| i.to_string()).unwrap_or_default(),
        tls,
        received,
        sent,
        duration_ms = started.elapsed().as_millis() as u64,
        outcome,
    );
}
