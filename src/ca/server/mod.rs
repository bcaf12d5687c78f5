//! The CA service: Istio's `istio.v1.auth.IstioCertificateService/CreateCertificate` over
//! TLS (HTTP/2, gRPC), signing workload CSRs.
//!
//! - Transport: tokio-rustls terminates TLS with a serving certificate the CA issues itself
//!   (SPIFFE ID `spiffe://<td>/ns/istio-system/sa/outrider-ca` plus the `--dns` names); a
//!   client certificate is optional and, when presented, must be a valid SVID of the CA's
//!   bundle. hyper serves HTTP/2 and tonic's codec layer does the gRPC framing with prost.
//! - Caller authentication: the caller's SVID over mTLS (renewals), else a bootstrap token
//!   (`authorization: Bearer <jwt>`, see [`crate::ca::token`]). The certificate is issued for
//!   that identity only; the CSR's SANs are ignored, its signature is checked.
//! - Policy: `--default-ttl` when the request asks for ≤ 0 s, an error above `--max-ttl`
//!   (Istio), a token bucket per identity, a cap on the request size. Every decision is one
//!   audit line (target `outrider::ca::audit`) and a counter in [`CaStats`].
//! - Exposure: no TLS session resumption (a resumed handshake would skip client-certificate
//!   verification and let an expired or retired identity renew); deadlines on the TLS
//!   handshake, on each request, on idle connections and on HTTP/2 keep-alive PINGs; a cap on
//!   open connections in all and per source address, so one client holding connections
//!   cannot stop sidecars renewing. Refused and timed-out connections are counted.
//! - The CA directory is reread every second: root rotation steps (see
//!   [`crate::ca::rotation`]) apply without a restart, and the serving certificate is
//!   reissued when the signing root changes or half its life has passed.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::ca::impersonation::{ImpersonationPolicy, NodeAccount, NodeIdentities};
use crate::ca::rotation::{self, Material};
use crate::ca::token::TokenKey;
use crate::ca::{workload_id, CaError};
use crate::identity::svid::PROVIDER;
use crate::identity::{CertStore, SpiffeId};
use crate::tls::{SpiffeClientVerifier, StoreCertResolver};

mod connection;
mod request;
mod stats;

use connection::{serve_connection, AbortOnDrop, SourceSlot};
use request::Bucket;
use stats::serve_metrics;
pub use stats::CaStats;

/// The namespace and service account of the CA's own serving identity.
pub const CA_NAMESPACE: &str = "istio-system";
/// See [`CA_NAMESPACE`].
pub const CA_SERVICE_ACCOUNT: &str = "outrider-ca";
/// Largest gRPC message accepted (a CSR is ~0.5 KiB; RSA-4096 ~2 KiB).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Largest CSR accepted inside a request.
pub const MAX_CSR_BYTES: usize = 16 * 1024;
/// Open connections in all; further ones are closed at accept.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Open connections per source IP address (mid-handshake ones included); further ones from
/// that address are closed at accept, so one client cannot take every slot.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 32;
/// Deadline for the TLS handshake of a new connection.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection with no request in flight for this long is closed (GOAWAY, then closed).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// HTTP/2 PING interval on a connection, to notice dead peers.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// A PING not answered within this closes the connection.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for one request, from its headers to its response (a slow body counts).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent requests (HTTP/2 streams) per connection; a sidecar makes one.
const MAX_STREAMS_PER_CONNECTION: u32 = 16;
/// How long a connection closed for idleness may take to say goodbye (GOAWAY exchange).
const GOAWAY_GRACE: Duration = Duration::from_secs(2);
const RELOAD_INTERVAL: Duration = Duration::from_secs(1);
const SERVING_TTL: Duration = Duration::from_secs(24 * 3600);

/// Plain configuration of the CA service.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The CA directory (`root-cert.pem`, `root-key.pem`, `token-key.pem`, rotation files).
    pub dir: PathBuf,
    pub listen: SocketAddr,
    /// DNS names of the serving certificate (what clients dial: `ca`, `localhost`, ...).
    pub dns: Vec<String>,
    /// Validity for requests that ask for none (≤ 0).
    pub default_ttl: Duration,
    /// Requests asking for more are refused (INVALID_ARGUMENT), as Istio does.
    pub max_ttl: Duration,
    /// Certificates per identity per minute (token bucket refill rate).
    pub rate_per_minute: u32,
    /// Token bucket size per identity.
    pub burst: u32,
    /// Where to serve `/stats/prometheus` for the CA itself (none: not served).
    pub metrics: Option<SocketAddr>,
    /// Open connections in all ([`DEFAULT_MAX_CONNECTIONS`]).
    pub max_connections: usize,
    /// Open connections per source IP address ([`DEFAULT_MAX_CONNECTIONS_PER_IP`]).
    pub max_connections_per_ip: usize,
    /// TLS handshake deadline ([`DEFAULT_HANDSHAKE_TIMEOUT`]).
    pub handshake_timeout: Duration,
    /// Close a connection with no request in flight for this long ([`DEFAULT_IDLE_TIMEOUT`]).
    pub idle_timeout: Duration,
    /// HTTP/2 keep-alive PING interval ([`DEFAULT_KEEPALIVE_INTERVAL`]).
    pub keepalive_interval: Duration,
    /// HTTP/2 keep-alive PING deadline ([`DEFAULT_KEEPALIVE_TIMEOUT`]).
    pub keepalive_timeout: Duration,
    /// Deadline per request ([`DEFAULT_REQUEST_TIMEOUT`]); DEADLINE_EXCEEDED after it.
    pub request_timeout: Duration,
    /// IP addresses of the serving certificate (clients that dial the CA by address).
    pub ips: Vec<IpAddr>,
    /// Node agents that may request certificates for other workloads
    /// (`ImpersonatedIdentity`, see [`crate::ca::impersonation`]); none by default.
    pub trusted_node_accounts: Vec<NodeAccount>,
    /// YAML allow-list of the identities each node account may request; without it a
    /// trusted node account may request any workload identity of the trust domain.
    pub node_identities: Option<PathBuf>,
}

impl ServeConfig {
    /// Refuses limits and deadlines of zero: each would refuse or close every connection.
    pub fn validate(&self) -> Result<(), CaError> {
        let bad = |setting, reason| Err(CaError::BadSetting { setting, reason });
        if self.max_connections == 0 {
            return bad("max_connections", "must be at least 1");
        }
        if self.max_connections_per_ip == 0 {
            return bad("max_connections_per_ip", "must be at least 1");
        }
        for (setting, value) in [
            ("handshake_timeout", self.handshake_timeout),
            ("idle_timeout", self.idle_timeout),
            ("keepalive_interval", self.keepalive_interval),
            ("keepalive_timeout", self.keepalive_timeout),
            ("request_timeout", self.request_timeout),
        ] {
            if value.is_zero() {
                return bad(setting, "must be longer than zero");
            }
        }
        Ok(())
    }

    /// The CA directory `dir` served on `listen` with every other setting at its default
    /// (the `ca serve` flag defaults).
    pub fn new(dir: PathBuf, listen: SocketAddr) -> ServeConfig {
        ServeConfig {
            dir,
            listen,
            dns: vec!["ca".into()],
            default_ttl: Duration::from_secs(24 * 3600),
            max_ttl: Duration::from_secs(90 * 24 * 3600),
            rate_per_minute: 60,
            burst: 10,
            metrics: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            ips: Vec::new(),
            trusted_node_accounts: Vec::new(),
            node_identities: None,
        }
    }
}

/// A bound, not yet running, CA service.
pub struct CaServer {
    listener: TcpListener,
    metrics: Option<TcpListener>,
    shared: Arc<Shared>,
}

struct Shared {
    config: ServeConfig,
    material: RwLock<Arc<Material>>,
    serving: CertStore,
    serving_id: SpiffeId,
    /// When the serving certificate was issued and until when it is valid.
    serving_life: Mutex<(SystemTime, SystemTime, u64)>,
    token_key: TokenKey,
    impersonation: ImpersonationPolicy,
    limiter: Mutex<HashMap<String, Bucket>>,
    /// Open connections per source address (see [`SourceSlot`]).
    sources: Mutex<HashMap<IpAddr, usize>>,
    issued_until: Mutex<HashMap<String, u64>>,
    stats: Arc<CaStats>,
}

impl fmt::Debug for CaServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaServer")
            .field("local_addr", &self.listener.local_addr().ok())
            .field("config", &self.shared.config)
            .finish()
    }
}

impl CaServer {
    /// Loads the CA directory (creating `token-key.pem` if missing), issues the serving
    /// certificate and binds the listener.
    pub async fn bind(config: ServeConfig) -> Result<CaServer, CaError> {
        config.validate()?;
        let material = rotation::load_material(&config.dir)?;
        let token_key = TokenKey::load_or_create(&config.dir)?;
        let td = material.authority.trust_domain().to_string();
        let serving_id = workload_id(&td, CA_NAMESPACE, CA_SERVICE_ACCOUNT)?;
        let allow_list = match &config.node_identities {
            Some(path) => Some(NodeIdentities::load(path)?),
            None => None,
        };
        if let Some(list) = &allow_list {
            for account in list.accounts() {
                if !config.trusted_node_accounts.contains(account) {
                    tracing::warn!(node_account = %account, "the node identities file names an account that is not a trusted node account; its entry is unused");
                }
            }
        }
        let impersonation =
            ImpersonationPolicy::new(config.trusted_node_accounts.clone(), allow_list);
        let shared = Arc::new(Shared {
            impersonation,
            serving: CertStore::new(&td),
            serving_id,
            serving_life: Mutex::new((UNIX_EPOCH, UNIX_EPOCH, 0)),
            material: RwLock::new(Arc::new(material)),
            token_key,
            limiter: Mutex::new(HashMap::new()),
            sources: Mutex::new(HashMap::new()),
            issued_until: Mutex::new(HashMap::new()),
            stats: Arc::new(CaStats::default()),
            config,
        });
        shared.reissue_serving()?;
        let listener = TcpListener::bind(shared.config.listen)
            .await
            .map_err(|source| CaError::Bind {
                addr: shared.config.listen,
                source,
            })?;
        let metrics = match shared.config.metrics {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| CaError::Bind { addr, source })?,
            ),
            None => None,
        };
        Ok(CaServer {
            listener,
            metrics,
            shared,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or(self.shared.config.listen)
    }

    /// The bound metrics address, if `/stats/prometheus` is served.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The decision counters.
    pub fn stats(&self) -> Arc<CaStats> {
        self.shared.stats.clone()
    }

    /// Serves forever.
    pub async fn run(mut self) {
        let tls = tokio_rustls::TlsAcceptor::from(self.shared.tls_config());
        // Stops the reload task when this future is dropped (tests, shutdown).
        let _reload = AbortOnDrop(tokio::spawn(reload_loop(self.shared.clone())));
        let _metrics = self
            .metrics
            .take()
            .map(|l| AbortOnDrop(tokio::spawn(serve_metrics(l, self.shared.stats.clone()))));
        let permits = Arc::new(Semaphore::new(self.shared.config.max_connections));
        tracing::info!(
            addr = %self.local_addr(),
            trust_domain = %self.shared.serving.trust_domain(),
            serving_id = %self.shared.serving_id,
            dns = ?self.shared.config.dns,
            ips = ?self.shared.config.ips,
            trusted_node_accounts = ?self.shared.impersonation.trusted().iter().map(ToString::to_string).collect::<Vec<_>>(),
            "CA service listening"
        );
        loop {
            let (tcp, remote) = match self.listener.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "CA service accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // The source's own limit first, so a flood from one address is counted as such
            // and never takes the slots other sources need.
            let Some(slot) = SourceSlot::take(&self.shared, remote.ip()) else {
                self.shared.refuse(remote, "per_ip_limit");
                continue;
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                self.shared.refuse(remote, "connection_limit");
                continue;
            };
            let tls = tls.clone();
            let shared = self.shared.clone();
            tokio::spawn(async move {
                let _held = (permit, slot);
                serve_connection(shared, tls, tcp, remote).await;
            });
        }
    }
}

impl Shared {
    fn material(&self) -> Arc<Material> {
        self.material
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Issues the CA's own serving certificate from the current signing root.
    fn reissue_serving(&self) -> Result<(), CaError> {
        let material = self.material();
        let issued = material.authority.issue_with_ips(
            &self.serving_id,
            SERVING_TTL,
            &self.config.dns,
            &self.config.ips,
        )?;
        self.serving
            .publish_pem(
                issued.chain_pem.as_bytes(),
                issued.key_pem.as_bytes(),
                material.bundle_pem.as_bytes(),
            )
            .map_err(|e| CaError::Generate(format!("the serving certificate was refused: {e}")))?;
        *self.serving_life.lock().unwrap_or_else(|e| e.into_inner()) =
            (SystemTime::now(), issued.not_after, material.fingerprint);
        Ok(())
    }

    fn serving_due(&self) -> bool {
        let (issued, not_after, fingerprint) =
            *self.serving_life.lock().unwrap_or_else(|e| e.into_inner());
        let half = not_after.duration_since(issued).unwrap_or_default() / 2;
        fingerprint != self.material().fingerprint || SystemTime::now() >= issued + half
    }

    fn tls_config(self: &Arc<Self>) -> Arc<ServerConfig> {
        let mut config = ServerConfig::builder_with_provider(PROVIDER.clone())
            .with_safe_default_protocol_versions()
            .expect("the aws-lc-rs provider supports TLS 1.2 and 1.3")
            // A client certificate is optional (the first request carries a token), but a
            // presented one must be a valid SVID of the CA's bundle.
            .with_client_cert_verifier(Arc::new(SpiffeClientVerifier::optional(
                self.serving.clone(),
            )))
            .with_cert_resolver(Arc::new(StoreCertResolver::new(self.serving.clone())));
        config.alpn_protocols = vec![b"h2".to_vec()];
        // No resumption at all: a resumed handshake skips client-certificate verification, so
        // a caller whose SVID has expired, or whose root was retired, could resume a session
        // from before and be issued a fresh certificate for that identity. A full handshake
        // per connection costs the CA nothing that matters (one request per connection).
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.ticketer = Arc::new(NoTickets);
        config.send_tls13_tickets = 0;
        Arc::new(config)
    }
}

/// A ticketer that never issues or accepts a ticket (rustls's own is not public; stating it
/// here keeps the CA's "no resumption" independent of rustls's defaults).
#[derive(Debug)]
struct NoTickets;

impl rustls::server::ProducesTickets for NoTickets {
    fn enabled(&self) -> bool {
        false
    }

    fn lifetime(&self) -> u32 {
        0
    }

    fn encrypt(&self, _plain: &[u8]) -> Option<Vec<u8>> {
        None
    }

    fn decrypt(&self, _cipher: &[u8]) -> Option<Vec<u8>> {
        None
    }
}

/// Rereads the CA directory every second; swaps in changed material and keeps the serving
/// certificate fresh. A directory caught mid-change (key and certificate not matching yet)
/// is retried on the next tick; the running material stays.
async fn reload_loop(shared: Arc<Shared>) {
    let mut ticker = tokio::time::interval(RELOAD_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error: Option<String> = None;
    loop {
        ticker.tick().await;
        let dir = shared.config.dir.clone();
        if rotation::fingerprint(&dir) != shared.material().fingerprint {
            match rotation::load_material(&dir) {
                Ok(material)
                    if material.authority.trust_domain() == shared.serving.trust_domain() =>
                {
                    tracing::info!(
                        signing_root = %material.authority.serial_hex(),
                        roots = material.bundle_pem.matches("BEGIN CERTIFICATE").count(),
                        "CA material changed; serving it"
                    );
                    *shared.material.write().unwrap_or_else(|e| e.into_inner()) =
                        Arc::new(material);
                    last_error = None;
                }
                Ok(material) => {
                    tracing::warn!(trust_domain = %material.authority.trust_domain(), "the CA directory now holds another trust domain; ignored");
                }
                Err(e) => {
                    let text = e.to_string();
                    if last_error.as_ref() != Some(&text) {
                        tracing::warn!(error = %text, "CA directory unreadable; keeping the current material");
                        last_error = Some(text);
                    }
                }
            }
        }
        if shared.serving_due() {
            if let Err(e) = shared.reissue_serving() {
                tracing::warn!(error = %e, "cannot reissue the CA's serving certificate");
            }
        }
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_limits_and_deadlines_are_refused() {
        let ok = ServeConfig::new("/ca".into(), "127.0.0.1:0".parse().unwrap());
        assert!(ok.validate().is_ok());
        type Change = fn(&mut ServeConfig);
        let cases: [(&str, Change); 3] = [
            ("max_connections_per_ip", |c| c.max_connections_per_ip = 0),
            ("idle_timeout", |c| c.idle_timeout = Duration::ZERO),
            ("request_timeout", |c| c.request_timeout = Duration::ZERO),
        ];
        for (setting, change) in cases {
            let mut config = ok.clone();
            change(&mut config);
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(setting), "{err}");
        }
    }
}
