//! The data path: listeners, sniffing, inbound, outbound, the copy loop.
//!
//! Listeners never read configuration files or PEM: they see a [`Runtime`] — the resolved
//! [`Plan`](crate::config::Plan) with TLS client configurations already built
//! ([`runtime::build`]) — through a `watch` channel, so a reload swaps it between two
//! connections.

pub mod captured;
pub mod copy;
pub mod http;
pub mod inbound;
pub mod listeners;
pub mod live;
pub mod outbound;
pub mod plaintext;
pub mod resolve;
pub mod runtime;
pub mod sniff;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

pub use copy::CopyConfig;
pub use outbound::{OutboundRuntime, UpstreamTls};
pub use runtime::{PeerDirectory, Runtime};

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
    /// Inbound connections beyond this are refused, whatever the total: a flood of inbound
    /// connections cannot take the slots the app's outbound calls need.
    pub max_inbound_connections: usize,
    /// Outbound connections beyond this are refused, whatever the total.
    pub max_outbound_connections: usize,
    pub copy: CopyConfig,
    /// Pooled HTTP/2 connections between sidecars (HTTP destinations).
    pub h2_pool: http::pool::PoolSettings,
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            detect_timeout: Duration::from_millis(500),
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            max_connections: 16_384,
            max_inbound_connections: 12_288,
            max_outbound_connections: 12_288,
            copy: CopyConfig::default(),
            h2_pool: http::pool::PoolSettings::default(),
        }
    }
}

/// Handles shared by every listener of one sidecar.
#[derive(Clone)]
pub struct Shared {
    /// Shared, not cloned: `Shared` is cloned per connection.
    pub metrics: Arc<Metrics>,
    pub plaintext: Arc<plaintext::PlaintextLog>,
    pub shutdown: Shutdown,
    pub settings: ProxySettings,
    /// Endpoint names, resolved off the connection path.
    pub resolver: Arc<resolve::Resolver>,
    /// Keep-alive HTTP pools to the local app (HTTP ports).
    pub http: Arc<http::AppClients>,
    /// Pooled HTTP/2-over-mTLS connections to peer sidecars (HTTP destinations).
    pub h2_pool: Arc<http::pool::H2Pool>,
    limits: Arc<Limits>,
}

/// Connection slots: one pool for all connections, one per direction.
struct Limits {
    total: Arc<Semaphore>,
    inbound: Arc<Semaphore>,
    outbound: Arc<Semaphore>,
}

/// Which way a connection goes through the sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// A peer (or a plaintext client) to the app.
    Inbound,
    /// The app to a destination.
    Outbound,
}

/// The slots one connection holds; released on drop.
pub struct Permits {
    _total: OwnedSemaphorePermit,
    _direction: OwnedSemaphorePermit,
}

impl Shared {
    pub fn new(
        metrics: Metrics,
        plaintext: Arc<plaintext::PlaintextLog>,
        shutdown: Shutdown,
        settings: ProxySettings,
        resolver: Arc<resolve::Resolver>,
    ) -> Shared {
        let limits = Limits {
            total: Arc::new(Semaphore::new(settings.max_connections)),
            inbound: Arc::new(Semaphore::new(settings.max_inbound_connections)),
            outbound: Arc::new(Semaphore::new(settings.max_outbound_connections)),
        };
        Shared {
            metrics: Arc::new(metrics),
            plaintext,
            shutdown,
            settings,
            resolver,
            http: Arc::default(),
            h2_pool: Arc::new(http::pool::H2Pool::new(settings.h2_pool)),
            limits: Arc::new(limits),
        }
    }

    /// A slot for one more connection in `direction`, or `None` when the direction's cap or
    /// the total cap is reached.
    pub fn permits(&self, direction: Direction) -> Option<Permits> {
        let pool = match direction {
            Direction::Inbound => &self.limits.inbound,
            Direction::Outbound => &self.limits.outbound,
        };
        let direction = pool.clone().try_acquire_owned().ok()?;
        let total = self.limits.total.clone().try_acquire_owned().ok()?;
        Some(Permits {
            _total: total,
            _direction: direction,
        })
    }
}

/// Closes a TCP connection with a reset (RST) instead of a FIN: what a client of an Istio
/// STRICT port sees ("connection reset by peer").
pub fn reset(stream: TcpStream) {
    let sock = socket2::SockRef::from(&stream);
    let _ = sock.set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// The next accepted connection, or `None` once draining starts or the listener is stopped
/// (it left the plan). Accept errors (such as running out of file descriptors) are logged and
/// retried after a short pause.
pub(crate) async fn accept(
    listener: &tokio::net::TcpListener,
    draining: &mut watch::Receiver<bool>,
    stop: &mut watch::Receiver<bool>,
    what: &'static str,
) -> Option<(TcpStream, std::net::SocketAddr)> {
    loop {
        tokio::select! {
            _ = crate::shutdown::draining(stop) => return None,
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

/// Binds a listener now; the error names the address and `what` it is for, so a conflict
/// fails start-up (or a reload's addition) with a message that says which.
pub(crate) async fn bind_listener(
    addr: std::net::SocketAddr,
    what: &str,
) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot listen on {addr} ({what}): {e}"))
    })
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
