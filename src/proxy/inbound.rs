//! Inbound: one listener per workload port. Peeks at the first bytes, then terminates mesh
//! mTLS, passes plaintext (PERMISSIVE, DISABLE) or resets it (STRICT), and carries the
//! connection to the app on `127.0.0.1:<targetPort>` (SEMANTICS §2).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::copy::copy_bidirectional;
use super::sniff::{detect, Detected, Rewind};
use super::{reset, tls_error, tune, Runtime, Shared};
use crate::config::{InboundPlan, MtlsMode, Protocol};
use crate::metrics::{Peer, Reporter, TcpLabels};

/// One bound inbound listener.
pub struct Inbound {
    listener: TcpListener,
    /// The sidecar port (`port` of the plan), the key to find this listener's plan entry.
    port: u16,
    app_host: IpAddr,
}

impl Inbound {
    /// Binds `addr` now (a conflict fails start-up with the address in the message).
    pub async fn bind(addr: SocketAddr, port: u16, app_host: IpAddr) -> std::io::Result<Inbound> {
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot listen on {addr} (inbound port {port}): {e}"),
            )
        })?;
        Ok(Inbound {
            listener,
            port,
            app_host,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// Accepts until draining starts.
    pub async fn run(
        self,
        shared: Shared,
        runtime: watch::Receiver<Arc<Runtime>>,
        tls: TlsAcceptor,
    ) {
        let mut draining = shared.shutdown.watch();
        loop {
            let Some((stream, peer)) =
                super::accept(&self.listener, &mut draining, "inbound").await
            else {
                return;
            };
            let Ok(permit) = shared.permits.clone().try_acquire_owned() else {
                shared
                    .metrics
                    .inbound_rejected(self.port, "connection_limit");
                reset(stream);
                continue;
            };
            let rt = runtime.borrow().clone();
            let Some(index) = rt.plan.inbound.iter().position(|p| p.port == self.port) else {
                // The port left the plan on reload: refuse until the listener set is rebuilt.
                shared
                    .metrics
                    .inbound_rejected(self.port, "port_not_in_plan");
                reset(stream);
                continue;
            };
            let shared = shared.clone();
            let tls = tls.clone();
            let app = SocketAddr::new(self.app_host, rt.plan.inbound[index].target_port);
            tokio::spawn(async move {
                let _permit = permit;
                let _guard = shared.shutdown.connection();
                let plan = &rt.plan.inbound[index];
                serve(stream, peer, plan, app, &rt, &shared, tls).await;
            });
        }
    }
}

/// How an accepted connection is carried.
enum Carry {
    Mtls,
    Plain,
    Passthrough,
}

async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    plan: &InboundPlan,
    app: SocketAddr,
    rt: &Runtime,
    shared: &Shared,
    tls: TlsAcceptor,
) {
    tune(&stream);
    let settings = shared.settings;
    let (detected, prefix) = if plan.mode == MtlsMode::Disable {
        // DISABLE ports get no TLS inspection: everything goes to the app as it came.
        (Detected::Plaintext, Vec::new())
    } else {
        match detect(&mut stream, settings.detect_timeout).await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(%peer, port = plan.port, error = %e, "downstream failed during detection");
                shared
                    .metrics
                    .inbound_rejected(plan.port, "downstream_error");
                return;
            }
        }
    };
    let carry = match (&detected, plan.mode) {
        (Detected::Closed, _) => return,
        (Detected::Malformed, _) => {
            shared
                .metrics
                .inbound_rejected(plan.port, "malformed_client_hello");
            tracing::info!(%peer, port = plan.port, "closed: malformed TLS ClientHello");
            reset(stream);
            return;
        }
        (Detected::Tls { .. }, MtlsMode::Strict)
        | (Detected::Tls { mesh: true, .. }, MtlsMode::Permissive) => Carry::Mtls,
        (Detected::Tls { mesh: false, .. }, MtlsMode::Permissive) => {
            if matches!(
                plan.protocol,
                Protocol::Http | Protocol::Http2 | Protocol::Grpc
            ) {
                // Istio builds no chain for foreign TLS on HTTP ports.
                shared
                    .metrics
                    .inbound_rejected(plan.port, "non_mesh_tls_on_http_port");
                reset(stream);
                return;
            }
            Carry::Passthrough
        }
        (Detected::Plaintext | Detected::Silent, MtlsMode::Strict) => {
            shared.metrics.plaintext_rejected(plan.port);
            shared.plaintext.record(peer.ip(), plan.port, true);
            tracing::info!(%peer, port = plan.port, decided_by = %plan.decided_by, "reset: plaintext on a STRICT port");
            reset(stream);
            return;
        }
        (Detected::Plaintext | Detected::Silent, _) => {
            shared.metrics.plaintext_accepted(plan.port);
            shared.plaintext.record(peer.ip(), plan.port, false);
            Carry::Plain
        }
        (Detected::Tls { .. }, MtlsMode::Disable) => Carry::Passthrough,
    };
    let downstream = Rewind::new(prefix, stream);
    match carry {
        Carry::Mtls => {
            let handshake =
                tokio::time::timeout(settings.handshake_timeout, tls.accept(downstream)).await;
            let tls_stream = match handshake {
                Err(_) => {
                    shared.metrics.handshake_failed("inbound", "timeout");
                    tracing::info!(%peer, port = plan.port, "downstream TLS handshake timed out");
                    return;
                }
                Ok(Err(e)) => {
                    let reason = tls_error(&e)
                        .map(crate::tls::failure_reason)
                        .unwrap_or("io");
                    shared.metrics.handshake_failed("inbound", reason);
                    tracing::info!(%peer, port = plan.port, reason, error = %e, "downstream TLS handshake failed");
                    return;
                }
                Ok(Ok(s)) => s,
            };
            let peer_id = tls_stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(crate::tls::peer_spiffe_id);
            let source = match &peer_id {
                Some(id) => rt.peers.lookup(id),
                None => Peer::unknown(),
            };
            forward(
                tls_stream,
                peer,
                source,
                "mutual_tls",
                plan,
                app,
                rt,
                shared,
            )
            .await;
        }
        Carry::Plain | Carry::Passthrough => {
            forward(
                downstream,
                peer,
                Peer::unknown(),
                "none",
                plan,
                app,
                rt,
                shared,
            )
            .await;
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn forward<S: AsyncRead + AsyncWrite + Unpin>(
    mut downstream: S,
    peer: SocketAddr,
    source: Peer,
    security: &'static str,
    plan: &InboundPlan,
    app: SocketAddr,
    rt: &Runtime,
    shared: &Shared,
) {
    let started = Instant::now();
    let mut upstream = match tokio::time::timeout(
        shared.settings.connect_timeout,
        TcpStream::connect(app),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            shared
                .metrics
                .inbound_rejected(plan.port, "app_unreachable");
            tracing::warn!(%peer, %app, error = %e, "local app refused the connection");
            return;
        }
        Err(_) => {
            shared
                .metrics
                .inbound_rejected(plan.port, "app_unreachable");
            tracing::warn!(%peer, %app, "local app connect timed out");
            return;
        }
    };
    tune(&upstream);
    let w = &rt.plan.workload;
    let labels = TcpLabels {
        reporter: Reporter::Destination,
        source: source.clone(),
        destination: rt.me.clone(),
        destination_service: format!("{}.{}.svc.cluster.local", w.service, w.namespace),
        destination_service_name: w.service.clone(),
        destination_service_namespace: w.namespace.clone(),
        security_policy: security,
    };
    let conn = shared.metrics.tcp_connection(&labels, "inbound");
    let (end, received, sent) = copy_bidirectional(
        &mut downstream,
        &mut upstream,
        shared.settings.copy,
        |rx, tx| conn.add(rx, tx),
    )
    .await;
    let outcome = end.outcome("downstream", "upstream");
    tracing::info!(
        target: "access",
        direction = "inbound",
        %peer,
        port = plan.port,
        source_principal = %source.principal,
        security,
        mode = ?plan.mode,
        received,
        sent,
        duration_ms = started.elapsed().as_millis() as u64,
        outcome,
    );
}
