//! The gateway's listeners: one per Gateway server port, kept in step with the plan on
//! reload, and what happens to a connection before its first request.
//!
//! On a port whose servers use TLS, the ClientHello is read first (capped in size and time,
//! replayed afterwards): its SNI picks the server ([`route::server_for_host`]); PASSTHROUGH
//! servers get the bytes untouched, the others terminate TLS with the server's own
//! configuration ([`EdgeCertificates::server_config`], or the gateway's SVID for
//! ISTIO_MUTUAL). Every outcome of that handshake is counted by server
//! (`outrider_gateway_tls_handshakes_total`). On a plaintext port, HTTP servers are chosen per
//! request by the authority; TCP servers carry the connection as it is.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::certs::{handshake_outcome, EdgeCertificates};
use crate::config::{GatewayPlan, ServerTlsMode};
use crate::proxy::http::route;
use crate::proxy::sniff::{self, Detected, Rewind};
use crate::proxy::{reset, tune, Direction, Runtime, Shared};

/// What every gateway connection needs besides its socket.
pub struct GatewayContext {
    pub shared: Shared,
    pub runtime: watch::Receiver<Arc<Runtime>>,
    /// The edge certificates of SIMPLE / MUTUAL / OPTIONAL_MUTUAL servers.
    pub edge: EdgeCertificates,
    /// The gateway's own mesh server configuration (ISTIO_MUTUAL servers).
    pub mesh: TlsAcceptor,
}

/// The ports of a plan, bound and not serving yet.
pub struct BoundPorts {
    ip: IpAddr,
    listeners: Vec<(u16, TcpListener)>,
}

impl BoundPorts {
    /// Binds every server port of `plan` on `ip` now; a failure fails start-up with the
    /// address.
    pub async fn bind(plan: &GatewayPlan, ip: IpAddr) -> std::io::Result<BoundPorts> {
        let mut listeners = Vec::new();
        for p in &plan.ports {
            let addr = SocketAddr::new(ip, p.port);
            let l = crate::proxy::bind_listener(addr, "gateway server port").await?;
            listeners.push((p.port, l));
        }
        Ok(BoundPorts { ip, listeners })
    }

    /// (server port, bound address) of each listener.
    pub fn addrs(&self) -> Vec<(u16, SocketAddr)> {
        self.listeners
            .iter()
            .filter_map(|(p, l)| l.local_addr().ok().map(|a| (*p, a)))
            .collect()
    }

    /// Starts serving every bound port.
    pub fn start(self, ctx: GatewayContext) -> GatewayListeners {
        let mut running = GatewayListeners {
            ip: self.ip,
            ctx: Arc::new(ctx),
            ports: BTreeMap::new(),
        };
        for (port, listener) in self.listeners {
            running.start_port(port, listener);
        }
        running
    }
}

/// The serving listeners of a gateway.
pub struct GatewayListeners {
    ip: IpAddr,
    ctx: Arc<GatewayContext>,
    ports: BTreeMap<u16, Running>,
}

struct Running {
    local: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl GatewayListeners {
    /// (server port, bound address) of each serving listener.
    pub fn addrs(&self) -> Vec<(u16, SocketAddr)> {
        self.ports.iter().map(|(p, r)| (*p, r.local)).collect()
    }

    /// Brings the listeners in line with a reloaded plan: ports that left it stop accepting
    /// (their open connections go on until they close or the gateway drains); new ports are
    /// bound (a failure is logged and tried again on the next reload).
    pub async fn reconcile(&mut self, plan: &GatewayPlan) {
        let wanted: Vec<u16> = plan.ports.iter().map(|p| p.port).collect();
        let gone: Vec<u16> = self
            .ports
            .keys()
            .copied()
            .filter(|p| !wanted.contains(p))
            .collect();
        for port in gone {
            if let Some(r) = self.ports.remove(&port) {
                let _ = r.stop.send(true);
                tracing::info!(
                    port,
                    "gateway port left the configuration; listener stopped"
                );
            }
        }
        for port in wanted {
            if self.ports.contains_key(&port) {
                continue;
            }
            let addr = SocketAddr::new(self.ip, port);
            match crate::proxy::bind_listener(addr, "gateway server port").await {
                Ok(l) => {
                    tracing::info!(port, %addr, "gateway port added");
                    self.start_port(port, l);
                }
                Err(e) => {
                    tracing::error!(port, error = %e, "gateway port not bound; retried on the next reload")
                }
            }
        }
    }

    /// Stops accepting on every port.
    pub fn stop(&self) {
        for r in self.ports.values() {
            let _ = r.stop.send(true);
        }
    }

    fn start_port(&mut self, port: u16, listener: TcpListener) {
        let local = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::new(self.ip, port));
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, port, self.ctx.clone(), stop_rx));
        if let Some(old) = self.ports.insert(port, Running { local, stop, task }) {
            let _ = old.stop.send(true);
            old.task.abort();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    port: u16,
    ctx: Arc<GatewayContext>,
    mut stop: watch::Receiver<bool>,
) {
    let mut draining = ctx.shared.shutdown.watch();
    loop {
        let Some((stream, peer)) =
            crate::proxy::accept(&listener, &mut draining, &mut stop, "gateway").await
        else {
            return;
        };
        let Some(permits) = ctx.shared.permits(Direction::Inbound) else {
            ctx.shared
                .metrics
                .inbound_rejected(port, "connection_limit");
            reset(stream);
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _permits = permits;
            let _guard = ctx.shared.shutdown.connection();
            serve_connection(stream, peer, port, &ctx).await;
        });
    }
}

/// What the HTTP and L4 paths know about a downstream connection once it is admitted.
pub(super) struct Admitted {
    pub port: u16,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// The server the SNI chose (TLS ports); `None` on plaintext ports, where each request's
    /// authority chooses.
    pub server: Option<usize>,
    pub sni: Option<String>,
    /// TLS was terminated here (the request scheme is https).
    pub tls: bool,
    /// The client's certificate chain leaf (MUTUAL / OPTIONAL_MUTUAL), for XFCC.
    pub client_leaf: Option<CertificateDer<'static>>,
    /// ALPN agreed on h2.
    pub h2_alpn: bool,
    /// The server TLS settings the handshake was made under (TLS ports).
    pub handshake_tls: Option<crate::config::ServerTls>,
}

async fn serve_connection(mut tcp: TcpStream, peer: SocketAddr, port: u16, ctx: &GatewayContext) {
    tune(&tcp);
    let local = tcp
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], port)));
    let rt = ctx.runtime.borrow().clone();
    let found = rt
        .plan
        .gateway
        .as_ref()
        .and_then(|g| g.ports.iter().enumerate().find(|(_, p)| p.port == port));
    let Some((_, plan)) = found else {
        // The port left the plan; its listener is being stopped.
        reset(tcp);
        return;
    };
    let metrics = &ctx.shared.metrics;
    if !plan.is_tls() {
        let admitted = Admitted {
            port,
            peer,
            local,
            server: None,
            sni: None,
            tls: false,
            client_leaf: None,
            h2_alpn: false,
            handshake_tls: None,
        };
        if plan.servers.iter().any(|s| s.protocol.is_http()) {
            super::http::serve(tcp, admitted, ctx.runtime.clone(), &ctx.shared).await;
        } else {
            // A plaintext TCP server: the first one on the port carries it.
            let admitted = Admitted {
                server: Some(0),
                ..admitted
            };
            super::l4::tcp(tcp, &admitted, plan, &rt, &ctx.shared).await;
        }
        return;
    }

    let timeout = ctx.shared.settings.handshake_timeout;
    let (detected, prefix) = match sniff::detect(&mut tcp, timeout, timeout).await {
        Ok(d) => d,
        Err(e) => {
            tracing::debug!(%peer, port, error = %e, "gateway: client failed before its ClientHello");
            return;
        }
    };
    let sni = match detected {
        Detected::Tls { sni, .. } => sni,
        Detected::Closed => return,
        Detected::Silent => {
            metrics.gateway_handshake(port, "-", "timeout");
            tracing::info!(%peer, port, "gateway: closed a client that sent nothing");
            return;
        }
        Detected::Plaintext | Detected::Malformed => {
            metrics.gateway_handshake(port, "-", "not_tls");
            tracing::info!(%peer, port, "gateway: closed a client that did not start with a TLS ClientHello");
            reset(tcp);
            return;
        }
    };
    let Some(index) = route::server_for_host(&plan.servers, sni.as_deref()) else {
        metrics.gateway_handshake(port, "-", "no_server");
        tracing::info!(%peer, port, sni = sni.as_deref().unwrap_or(""), "gateway: no server for this SNI; closed");
        reset(tcp);
        return;
    };
    let server = &plan.servers[index];
    let Some(tls) = &server.tls else {
        // A plaintext server on a TLS port cannot be chosen by SNI (the configuration refuses
        // mixing); nothing to do with the connection.
        reset(tcp);
        return;
    };
    let mut admitted = Admitted {
        port,
        peer,
        local,
        server: Some(index),
        sni,
        tls: true,
        client_leaf: None,
        h2_alpn: false,
        handshake_tls: Some(tls.clone()),
    };
    let io = Rewind::new(prefix, tcp);
    if tls.mode == ServerTlsMode::Passthrough {
        super::l4::passthrough(io, &admitted, plan, &rt, &ctx.shared).await;
        return;
    }
    let acceptor = if tls.mode == ServerTlsMode::IstioMutual {
        ctx.mesh.clone()
    } else {
        match ctx.edge.server_config(port, index) {
            Some(config) => TlsAcceptor::from(config),
            None => {
                metrics.gateway_handshake(port, &server.name, "other");
                tracing::error!(%peer, port, server = %server.name, "gateway: no TLS material for this server; closed");
                return;
            }
        }
    };
    let accepted = acceptor.accept(io).into_fallible();
    let stream = match tokio::time::timeout(timeout, accepted).await {
        Err(_) => {
            metrics.gateway_handshake(port, &server.name, "timeout");
            tracing::info!(%peer, port, server = %server.name, "gateway: TLS handshake timed out");
            return;
        }
        Ok(Err((e, io))) => {
            let outcome = handshake_outcome(&e);
            metrics.gateway_handshake(port, &server.name, outcome);
            tracing::info!(%peer, port, server = %server.name, outcome, error = %e, "gateway: TLS handshake failed");
            close_after_alert(io).await;
            return;
        }
        Ok(Ok(stream)) => stream,
    };
    metrics.gateway_handshake(port, &server.name, "ok");
    {
        let conn = stream.get_ref().1;
        admitted.client_leaf = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.clone().into_owned());
        admitted.h2_alpn = conn.alpn_protocol() == Some(b"h2");
    }
    if server.protocol.is_http() {
        super::http::serve(stream, admitted, ctx.runtime.clone(), &ctx.shared).await;
    } else {
        super::l4::tcp(stream, &admitted, plan, &rt, &ctx.shared).await;
    }
}

/// Closes a connection whose handshake failed so that the client reads the alert already
/// sent: under TLS 1.3 a client without the required certificate has finished its side and
/// sent its request; closing with that request unread would reset the connection, and the
/// client would see "connection reset" instead of `certificate required`. So: FIN first,
/// then read (and discard) what the client still sends, briefly and boundedly.
async fn close_after_alert<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut io: S) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const LINGER: std::time::Duration = std::time::Duration::from_secs(1);
    const MAX_DRAIN: usize = 64 * 1024;
    let _ = tokio::time::timeout(LINGER, async {
        let _ = io.shutdown().await;
        let mut buf = [0u8; 4096];
        let mut drained = 0;
        while drained < MAX_DRAIN {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}
