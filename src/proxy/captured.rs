//! The capture listeners of `outrider run --capture` (SEMANTICS §10): Envoy's
//! `virtualOutbound` (15001) and `virtualInbound` (15006). The nat rules of `outrider
//! iptables` redirect the app's connections here; `SO_ORIGINAL_DST` says where each was going.
//!
//! - Outbound: the original `IP:port` is looked up among the services' member addresses
//!   ([`super::runtime::CaptureTable`]); a match is carried exactly as an `outbound` entry to
//!   that service would be (routes, subsets, mTLS, L7). No match: passed through in plaintext
//!   to where it was going (`ALLOW_ANY`, metrics say `PassthroughCluster`) or refused
//!   (`REGISTRY_ONLY`, `BlackHoleCluster`).
//! - Inbound: the original port picks the workload port (its mode, protocol and
//!   authorization); a port the workload does not declare gets the workload-level mode and
//!   TCP, and goes to the app on that same port.
//!
//! A connection that reached a capture listener without being redirected (its original
//! destination is the listener itself) is refused: passing it on would connect the listener
//! to itself.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::copy::copy_bidirectional;
use super::http::alpn::Acceptors;
use super::inbound::{self, Accepted};
use super::live::{Carried, LiveConnections};
use super::{reset, tune, Direction, Runtime, Shared};
use crate::capture::original_dst;
use crate::config::OutboundTrafficPolicy;
use crate::metrics::{Peer, Reporter, TcpLabels};

/// Istio's name for the destination of a captured connection no service claims, passed on.
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
/// Istio's name for the destination of a captured connection no service claims, refused.
pub const BLACK_HOLE_CLUSTER: &str = "BlackHoleCluster";

/// Where a captured connection was going, or why that cannot be used.
fn redirected_to(stream: &TcpStream, listener: SocketAddr) -> Result<SocketAddr, &'static str> {
    let dst = original_dst(stream).map_err(|_| "no_original_destination")?;
    // Conntrack answers for every connection: one that came straight to the listener
    // reports the listener's own address.
    if dst.port() == listener.port() && Some(dst) == stream.local_addr().ok() {
        return Err("not_redirected");
    }
    Ok(dst)
}

/// The outbound capture listener (15001).
pub struct CapturedOutbound {
    listener: TcpListener,
    live: Arc<LiveConnections>,
}

impl CapturedOutbound {
    pub async fn bind(addr: SocketAddr) -> std::io::Result<CapturedOutbound> {
        let listener = super::bind_listener(addr, "outbound capture").await?;
        Ok(CapturedOutbound {
            listener,
            live: Arc::default(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// Accepts until draining starts or `stop` turns true.
    pub async fn run(
        self,
        shared: Shared,
        runtime: watch::Receiver<Arc<Runtime>>,
        mut stop: watch::Receiver<bool>,
    ) {
        let local = self.local_addr();
        let mut draining = shared.shutdown.watch();
        loop {
            let Some((stream, peer)) =
                super::accept(&self.listener, &mut draining, &mut stop, "outbound capture").await
            else {
                return;
            };
            let Some(permits) = shared.permits(Direction::Outbound) else {
                shared.metrics.outbound_rejected(local, "connection_limit");
                reset(stream);
                continue;
            };
            let dst = match redirected_to(&stream, local) {
                Ok(dst) => dst,
                Err(reason) => {
                    shared.metrics.outbound_rejected(local, reason);
                    tracing::info!(%peer, reason, "captured outbound connection refused");
                    reset(stream);
                    continue;
                }
            };
            let rt = runtime.borrow().clone();
            let shared = shared.clone();
            self.live.spawn(move |registration| async move {
                let _permits = permits;
                let _guard = shared.shutdown.connection();
                registration.decide(|| (Carried::Outbound, ()));
                let Some(out) = rt.captured.lookup(dst).cloned() else {
                    return unregistered(stream, peer, dst, local, &rt, &shared).await;
                };
                if super::http::outbound::carries(&out) {
                    Box::pin(super::http::outbound::serve(stream, peer, out, rt, shared)).await;
                } else {
                    super::outbound::serve(stream, peer, &out, &rt, &shared).await;
                }
            });
        }
    }
}

/// A captured connection to an address no service of the mesh has: Istio's
/// `outboundTrafficPolicy`.
async fn unregistered(
    mut app: TcpStream,
    peer: SocketAddr,
    dst: SocketAddr,
    listener: SocketAddr,
    rt: &Runtime,
    shared: &Shared,
) {
    let policy = rt.plan.capture.outbound_traffic_policy;
    let cluster = match policy {
        OutboundTrafficPolicy::AllowAny => PASSTHROUGH_CLUSTER,
        OutboundTrafficPolicy::RegistryOnly => BLACK_HOLE_CLUSTER,
    };
    let labels = TcpLabels {
        reporter: Reporter::Source,
        source: rt.me.clone(),
        destination: Peer::unknown(),
        destination_service: cluster.into(),
        destination_service_name: cluster.into(),
        destination_service_namespace: crate::metrics::UNKNOWN.into(),
        security_policy: "unknown",
    };
    let conn = shared.metrics.tcp_connection(&labels, "outbound");
    if policy == OutboundTrafficPolicy::RegistryOnly {
        shared.metrics.outbound_rejected(listener, "registry_only");
        tracing::info!(target: "access", direction = "outbound", %peer, destination = %dst, cluster, "refused: not a service of the mesh (REGISTRY_ONLY)");
        drop(conn);
        return reset(app);
    }
    tune(&app);
    let started = Instant::now();
    let connect = tokio::time::timeout(shared.settings.connect_timeout, TcpStream::connect(dst));
    let mut upstream = match connect.await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            shared.metrics.upstream_failed(cluster, "connect_failed");
            tracing::warn!(%peer, destination = %dst, error = %e, side = "upstream", "passthrough connection failed");
            return reset(app);
        }
        Err(_) => {
            shared.metrics.upstream_failed(cluster, "connect_timeout");
            tracing::warn!(%peer, destination = %dst, side = "upstream", "passthrough connect timed out");
            return reset(app);
        }
    };
    tune(&upstream);
    let (end, received, sent) =
        copy_bidirectional(&mut app, &mut upstream, shared.settings.copy, |rx, tx| {
            conn.add(rx, tx)
        })
        .await;
    tracing::info!(
        target: "access",
        direction = "outbound",
        %peer,
        destination = %dst,
        cluster,
        received,
        sent,
        duration_ms = started.elapsed().as_millis() as u64,
        outcome = end.outcome("app", "upstream"),
    );
}

/// The inbound capture listener (15006).
pub struct CapturedInbound {
    listener: TcpListener,
    app_host: IpAddr,
    /// Open connections by the port they were headed for, so a reload can hold each to
    /// that port's new mode and policy.
    live: Arc<PortConnections>,
}

/// Open captured inbound connections, by original port.
#[derive(Default)]
pub struct PortConnections {
    by_port: Mutex<HashMap<u16, Arc<LiveConnections>>>,
}

impl PortConnections {
    fn port(&self, port: u16) -> Arc<LiveConnections> {
        let mut map = self.by_port.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(port).or_default().clone()
    }

    /// Every port with connections open now, with them.
    pub fn ports(&self) -> Vec<(u16, Arc<LiveConnections>)> {
        let mut map = self.by_port.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, live| !live.is_empty());
        map.iter().map(|(p, l)| (*p, l.clone())).collect()
    }

    pub fn len(&self) -> usize {
        let map = self.by_port.lock().unwrap_or_else(|p| p.into_inner());
        map.values().map(|l| l.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl CapturedInbound {
    pub async fn bind(addr: SocketAddr, app_host: IpAddr) -> std::io::Result<CapturedInbound> {
        let listener = super::bind_listener(addr, "inbound capture").await?;
        Ok(CapturedInbound {
            listener,
            app_host,
            live: Arc::default(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn live(&self) -> Arc<PortConnections> {
        self.live.clone()
    }

    /// Accepts until draining starts or `stop` turns true.
    pub async fn run(
        self,
        shared: Shared,
        runtime: watch::Receiver<Arc<Runtime>>,
        tls: TlsAcceptor,
        mut stop: watch::Receiver<bool>,
    ) {
        let local = self.local_addr();
        let mut draining = shared.shutdown.watch();
        let tls = Acceptors::new(tls);
        loop {
            let Some((stream, peer)) =
                super::accept(&self.listener, &mut draining, &mut stop, "inbound capture").await
            else {
                return;
            };
            let dst = match redirected_to(&stream, local) {
                Ok(dst) => dst,
                Err(reason) => {
                    shared.metrics.inbound_rejected(local.port(), reason);
                    tracing::info!(%peer, reason, "captured inbound connection refused");
                    reset(stream);
                    continue;
                }
            };
            let Some(permits) = shared.permits(Direction::Inbound) else {
                shared
                    .metrics
                    .inbound_rejected(dst.port(), "connection_limit");
                reset(stream);
                continue;
            };
            let accepted = Accepted {
                stream,
                peer,
                port: dst.port(),
                app_host: self.app_host,
                original_dst: Some(dst),
            };
            let (shared, runtime, tls) = (shared.clone(), runtime.clone(), tls.clone());
            self.live
                .port(dst.port())
                .spawn(move |registration| async move {
                    let _permits = permits;
                    let _guard = shared.shutdown.connection();
                    inbound::serve(accepted, runtime, &shared, tls, registration).await;
                });
        }
    }
}
