//! Pooled, multiplexed HTTP/2 over mTLS between two outrider sidecars.
//!
//! The client sidecar offers the ALPN [`ALPN`] (beside the mesh ALPNs) on connections it makes
//! for HTTP destinations; a server sidecar offers it on HTTP ports. When both agree, the
//! connection joins the pool of its endpoint and carries many requests at once, so an app that
//! opens a connection per request no longer costs a TLS handshake per request. A peer that
//! does not agree (an Istio sidecar, an older outrider, a TCP port) gets each request on a
//! dedicated connection, as the app's own bytes would have arrived.
//!
//! A pool entry is keyed by the endpoint and its TLS client configuration, which is unique per
//! set of allowed server identities, so secure naming holds per pooled connection. New
//! connections are made under the entry's lock (a burst of first requests waits for one
//! handshake instead of racing many), up to `max_connections`; a connection is leased while it
//! carries fewer than `max_streams` requests; keep-alive PINGs find dead peers; a connection
//! idle for `idle_timeout` is closed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::UnixTime;
use rustls::{ClientConfig, HandshakeKind};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::body::RequestBody;
use super::io::Counted;
use super::server::{CONNECTION_WINDOW, STREAM_WINDOW};
use crate::identity::{PeerRole, SpiffeId};
use crate::metrics::TcpLabels;
use crate::proxy::outbound::{tcp_connect, tls_handshake, UpstreamEndpoint, UpstreamTls};
use crate::proxy::Shared;

/// The ALPN by which two outrider sidecars agree on pooled HTTP/2.
pub const ALPN: &[u8] = b"outrider-h2";

/// PINGs on a pooled connection this often; no answer within [`KEEPALIVE_TIMEOUT`] closes it.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Limits of the pool (flags `--h2-max-streams`, `--h2-idle-timeout`, `--h2-max-connections`).
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    /// Requests at once on one connection before another is opened.
    pub max_streams: usize,
    /// A connection without requests for this long is closed.
    pub idle_timeout: Duration,
    /// Connections per endpoint.
    pub max_connections: usize,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_streams: 100,
            idle_timeout: Duration::from_secs(60),
            max_connections: 4,
        }
    }
}

/// The pools of one sidecar.
pub struct H2Pool {
    settings: PoolSettings,
    epoch: Instant,
    entries: Mutex<HashMap<PoolKey, Arc<Entry>>>,
}

/// (endpoint host, port, address of the endpoint's TLS client configuration).
type PoolKey = (String, u16, usize);

struct Entry {
    /// The endpoint's mesh connector, offering [`ALPN`] first.
    connector: TlsConnector,
    /// Keeps the configuration (and so the key's address) alive.
    config: Arc<ClientConfig>,
    conns: Mutex<Vec<Arc<Pooled>>>,
    creating: tokio::sync::Mutex<()>,
    /// Until this time (ms since the pool's epoch; 0: never) the peer is taken not to speak
    /// [`ALPN`] (it did not agree last time): its requests go on dedicated connections for one
    /// idle timeout, then the next request asks again (the peer may have been upgraded or
    /// reconfigured).
    legacy_until: AtomicU64,
}

/// One pooled connection.
pub struct Pooled {
    sender: http2::SendRequest<RequestBody>,
    in_flight: AtomicUsize,
    /// Milliseconds since the pool's epoch at the last lease or return.
    last_active: AtomicU64,
    pub server_id: Option<SpiffeId>,
}

/// A request's slot on a pooled connection, returned on drop.
pub struct Lease {
    conn: Arc<Pooled>,
    epoch: Instant,
}

impl Lease {
    pub fn sender(&self) -> http2::SendRequest<RequestBody> {
        self.conn.sender.clone()
    }

    pub fn server_id(&self) -> Option<&SpiffeId> {
        self.conn.server_id.as_ref()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.conn
            .last_active
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.conn.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where a request goes.
pub enum Upstream {
    Pooled(Lease),
    /// A fresh mTLS connection for this request alone (the peer does not speak [`ALPN`]).
    Dedicated(Dedicated),
}

/// A fresh mTLS connection to an endpoint.
pub struct Dedicated {
    pub tls: Box<tokio_rustls::client::TlsStream<TcpStream>>,
    pub server_id: Option<SpiffeId>,
}

/// Which side failed and why, for `outrider_upstream_failures_total`.
pub type ConnectError = (&'static str, String);

impl H2Pool {
    pub fn new(settings: PoolSettings) -> H2Pool {
        H2Pool {
            settings,
            epoch: Instant::now(),
            entries: Mutex::default(),
        }
    }

    /// The entry of a mesh mTLS endpoint (`None` for any other TLS setting).
    fn entry(&self, ep: &UpstreamEndpoint) -> Option<Arc<Entry>> {
        let UpstreamTls::Tls {
            connector,
            mesh: Some(_),
            ..
        } = &ep.tls
        else {
            return None;
        };
        let config = connector.config().clone();
        let key = (ep.host.clone(), ep.port, Arc::as_ptr(&config) as usize);
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = entries.get(&key) {
            return Some(entry.clone());
        }
        // Entries whose configuration only the pool still holds belong to endpoints a reload
        // removed.
        entries.retain(|_, e| Arc::strong_count(&e.config) > 1);
        let mut with_alpn = (*config).clone();
        with_alpn.alpn_protocols.insert(0, ALPN.to_vec());
        let entry = Arc::new(Entry {
            connector: TlsConnector::from(Arc::new(with_alpn)),
            config,
            conns: Mutex::default(),
            creating: tokio::sync::Mutex::new(()),
            legacy_until: AtomicU64::new(0),
        });
        entries.insert(key, entry.clone());
        Some(entry)
    }

    /// A pooled connection with room for one more request (made if needed), or a dedicated
    /// connection when the peer does not speak [`ALPN`]. `labels` names a new connection in
    /// the TCP metrics from its server's identity.
    pub async fn checkout(
        &self,
        ep: &UpstreamEndpoint,
        shared: &Shared,
        labels: &(dyn Fn(Option<&SpiffeId>) -> TcpLabels + Sync),
    ) -> Result<Upstream, ConnectError> {
        let Some(entry) = self.entry(ep) else {
            return Err(("not_mesh", "the endpoint is not mesh mTLS".into()));
        };
        if self.now() < entry.legacy_until.load(Ordering::Relaxed) {
            return dedicated(ep, shared).await.map(Upstream::Dedicated);
        }
        if let Some(lease) = self.lease(&entry, false) {
            return Ok(Upstream::Pooled(lease));
        }
        let _creating = entry.creating.lock().await;
        // Whoever held the lock may have opened the connection this request needs.
        if let Some(lease) = self.lease(&entry, false) {
            return Ok(Upstream::Pooled(lease));
        }
        if self.open(&entry) >= self.settings.max_connections {
            // Every connection is full: queue on the least loaded one (HTTP/2 holds the
            // stream until one ends).
            if let Some(lease) = self.lease(&entry, true) {
                return Ok(Upstream::Pooled(lease));
            }
        }
        let (tls, server_id) = connect_tls(&entry.connector, ep, shared).await?;
        if tls.get_ref().1.alpn_protocol() != Some(ALPN) {
            entry.legacy_until.store(
                self.now() + self.settings.idle_timeout.as_millis() as u64,
                Ordering::Relaxed,
            );
            tracing::info!(endpoint = %format!("{}:{}", ep.host, ep.port), "peer does not speak pooled HTTP/2; its requests use dedicated connections");
            return Ok(Upstream::Dedicated(Dedicated {
                tls: Box::new(tls),
                server_id,
            }));
        }
        let tcp = shared
            .metrics
            .tcp_connection(&labels(server_id.as_ref()), "outbound");
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .handshake(TokioIo::new(Counted::new(tls, tcp)))
            .await
            .map_err(|e| ("h2_handshake_failed", e.to_string()))?;
        let pooled = Arc::new(Pooled {
            sender,
            in_flight: AtomicUsize::new(1),
            last_active: AtomicU64::new(self.now()),
            server_id,
        });
        tokio::spawn(drive(
            connection,
            Arc::downgrade(&pooled),
            self.settings.idle_timeout,
            self.epoch,
        ));
        entry
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(pooled.clone());
        Ok(Upstream::Pooled(Lease {
            conn: pooled,
            epoch: self.epoch,
        }))
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Open connections of `entry` (closed ones are forgotten).
    fn open(&self, entry: &Entry) -> usize {
        let mut conns = entry.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.retain(|c| !c.sender.is_closed());
        conns.len()
    }

    /// The least loaded open connection with room (or any open one when `over_limit`).
    fn lease(&self, entry: &Entry, over_limit: bool) -> Option<Lease> {
        let mut conns = entry.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.retain(|c| !c.sender.is_closed());
        let best = conns
            .iter()
            .filter(|c| c.sender.is_ready())
            .min_by_key(|c| c.in_flight.load(Ordering::Relaxed))?;
        if !over_limit && best.in_flight.load(Ordering::Relaxed) >= self.settings.max_streams {
            return None;
        }
        best.in_flight.fetch_add(1, Ordering::Relaxed);
        best.last_active.store(self.now(), Ordering::Relaxed);
        Some(Lease {
            conn: best.clone(),
            epoch: self.epoch,
        })
    }
}

/// Runs a pooled connection until it fails, or stays idle for `idle_timeout`.
async fn drive<T>(
    connection: http2::Connection<T, RequestBody, TokioExecutor>,
    pooled: Weak<Pooled>,
    idle_timeout: Duration,
    epoch: Instant,
) where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let mut connection = std::pin::pin!(connection);
    let mut tick = tokio::time::interval((idle_timeout / 4).max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ended = &mut connection => {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "pooled HTTP/2 connection failed");
                }
                return;
            }
            _ = tick.tick() => {
                let Some(p) = pooled.upgrade() else { return };
                let idle_ms = (epoch.elapsed().as_millis() as u64)
                    .saturating_sub(p.last_active.load(Ordering::Relaxed));
                if p.in_flight.load(Ordering::Relaxed) == 0
                    && idle_ms >= idle_timeout.as_millis() as u64
                {
                    tracing::debug!("closing an idle pooled HTTP/2 connection");
                    return;
                }
            }
        }
    }
}

/// A dedicated mTLS connection with the endpoint's ordinary mesh connector (no [`ALPN`]):
/// the peer's inbound treats it as any mesh connection (upgrades, legacy peers).
pub async fn dedicated(ep: &UpstreamEndpoint, shared: &Shared) -> Result<Dedicated, ConnectError> {
    let UpstreamTls::Tls { connector, .. } = &ep.tls else {
        return Err(("not_mesh", "the endpoint is not mesh mTLS".into()));
    };
    let (tls, server_id) = connect_tls(connector, ep, shared).await?;
    Ok(Dedicated {
        tls: Box::new(tls),
        server_id,
    })
}

/// TCP connect (each resolved address in turn), then the mesh TLS handshake; a resumed
/// session is checked against the live bundle.
async fn connect_tls(
    connector: &TlsConnector,
    ep: &UpstreamEndpoint,
    shared: &Shared,
) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, Option<SpiffeId>), ConnectError> {
    let UpstreamTls::Tls {
        server_name, mesh, ..
    } = &ep.tls
    else {
        return Err(("not_mesh", "the endpoint is not mesh mTLS".into()));
    };
    let tcp = tcp_connect(ep, shared).await?;
    let stream = tls_handshake(connector, server_name, tcp, shared).await?;
    let resumed = stream.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
    if let Some(store) = mesh {
        // A refused resumption empties the ticket cache: the next attempt is a full handshake.
        if let Err(e) =
            crate::tls::check_resumed(stream.get_ref().1, PeerRole::Server, store, UnixTime::now())
        {
            let reason = crate::tls::failure_reason(&e);
            shared.metrics.resumption_refused("outbound", reason);
            return Err(("tls_failed", format!("{reason}: {e}")));
        }
    }
    shared.metrics.handshake_completed("outbound", resumed);
    let server_id = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(crate::tls::peer_spiffe_id);
    Ok((stream, server_id))
}
