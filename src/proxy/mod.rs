//! The data path: listeners, sniffing, inbound, outbound, the copy loop.
//!
//! Listeners never read configuration files or PEM: they see a [`Runtime`] — the resolved
//! [`Plan`](crate::config::Plan) with TLS client configurations already built — through a
//! `watch` channel, so a reload swaps it between two connections.

pub mod copy;
pub mod inbound;
pub mod outbound;
pub mod plaintext;
pub mod sniff;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::config::Plan;
use crate::identity::SpiffeId;
use crate::metrics::{Metrics, Peer};
use crate::shutdown::Shutdown;

pub use copy::CopyConfig;
pub use outbound::{OutboundRuntime, UpstreamTls};

/// Limits and timeouts of the data path.
#[derive(Debug, Clone, Copy)]
pub struct ProxySettings {
    /// How long inbound waits for the client's first bytes before treating it as a
    /// server-speaks-first (plaintext) client.
    pub detect_timeout: Duration,
    /// Deadline for a whole TLS handshake.
    pub handshake_timeout: Duration,
    /// Deadline for a TCP connect to the app or an upstream endpoint.
    pub connect_timeout: Duration,
    /// Connections (inbound + outbound) beyond this are refused with a reset.
    pub max_connections: usize,
    pub copy: CopyConfig,
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            detect_timeout: Duration::from_millis(500),
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            max_connections: 16_384,
            copy: CopyConfig::default(),
        }
    }
}

/// Everything the listeners need for one version of the plan.
pub struct Runtime {
    pub plan: Arc<Plan>,
    /// One per `plan.outbound` entry, same order.
    pub outbound: Vec<Arc<OutboundRuntime>>,
    /// Who is behind a SPIFFE ID, for the metrics' source/destination labels.
    pub peers: PeerDirectory,
    /// This workload as the metrics name it.
    pub me: Peer,
}

/// SPIFFE ID → workload labels, computed from the configuration's Workload documents (there
/// is no control plane to exchange metadata with).
#[derive(Debug, Default, Clone)]
pub struct PeerDirectory {
    by_id: HashMap<SpiffeId, Peer>,
}

impl PeerDirectory {
    /// Records a workload; an ID shared by several workloads keeps only what they share.
    pub fn insert(&mut self, id: SpiffeId, peer: Peer) {
        match self.by_id.get_mut(&id) {
            None => {
                self.by_id.insert(id, peer);
            }
            Some(existing) => {
                if existing.workload != peer.workload {
                    existing.workload = crate::metrics::UNKNOWN.into();
                }
                if existing.app != peer.app {
                    existing.app = crate::metrics::UNKNOWN.into();
                }
                if existing.version != peer.version {
                    existing.version = crate::metrics::UNKNOWN.into();
                }
            }
        }
    }

    /// Labels for a peer identity; what is not known is `unknown`, the principal is always
    /// the ID, and the namespace falls back to the ID's `/ns/<x>/` part (as Istio does).
    pub fn lookup(&self, id: &SpiffeId) -> Peer {
        match self.by_id.get(id) {
            Some(p) => p.clone(),
            None => Peer {
                principal: id.to_string(),
                namespace: id
                    .namespace()
                    .unwrap_or(crate::metrics::UNKNOWN)
                    .to_string(),
                ..Peer::unknown()
            },
        }
    }
}

/// Handles shared by every listener of one sidecar.
#[derive(Clone)]
pub struct Shared {
    pub metrics: Metrics,
    pub plaintext: Arc<plaintext::PlaintextLog>,
    pub shutdown: Shutdown,
    pub settings: ProxySettings,
    pub permits: Arc<tokio::sync::Semaphore>,
}

/// Closes a TCP connection with a reset (RST) instead of a FIN: what a client of an Istio
/// STRICT port sees ("connection reset by peer").
pub fn reset(stream: TcpStream) {
    let sock = socket2::SockRef::from(&stream);
    let _ = sock.set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// The next accepted connection, or `None` once draining starts. Accept errors (such as
/// running out of file descriptors) are logged and retried after a short pause.
pub(crate) async fn accept(
    listener: &tokio::net::TcpListener,
    draining: &mut tokio::sync::watch::Receiver<bool>,
    what: &'static str,
) -> Option<(TcpStream, std::net::SocketAddr)> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => return Some(a),
                Err(e) => {
                    tracing::warn!(listener = what, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            _ = crate::shutdown::draining(draining) => return None,
        }
    }
}

/// Disables Nagle on a proxied socket; a failure is harmless and ignored.
pub(crate) fn tune(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
}

/// The `rustls::Error` inside an I/O error from tokio-rustls, if any.
pub(crate) fn tls_error(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}
