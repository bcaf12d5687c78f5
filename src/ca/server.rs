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

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tonic::{Code, Status};

use crate::ca::impersonation::{
    ImpersonationPolicy, NodeAccount, NodeIdentities, Refusal, IMPERSONATED_IDENTITY,
};
use crate::ca::proto::{
    IstioCertificateRequest, IstioCertificateResponse, CREATE_CERTIFICATE_PATH,
};
use crate::ca::rotation::{self, Material};
use crate::ca::token::{TokenError, TokenKey};
use crate::ca::{workload_id, CaError};
use crate::identity::svid::PROVIDER;
use crate::identity::{CertStore, SpiffeId};
use crate::tls::{peer_spiffe_id, SpiffeClientVerifier, StoreCertResolver};

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

/// Decisions counted since start; read by the metrics scrape.
#[derive(Debug, Default)]
pub struct CaStats {
    issued: AtomicU64,
    denied: Mutex<BTreeMap<&'static str, u64>>,
    refused: Mutex<BTreeMap<&'static str, u64>>,
    timed_out: Mutex<BTreeMap<&'static str, u64>>,
    impersonated: Mutex<BTreeMap<String, u64>>,
}

impl CaStats {
    /// Certificates issued.
    pub fn issued(&self) -> u64 {
        self.issued.load(Ordering::Relaxed)
    }

    /// Refusals by reason (snake_case labels).
    pub fn denied_by_reason(&self) -> BTreeMap<&'static str, u64> {
        self.denied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Certificates issued to node agents for other workloads, by node account
    /// (`<namespace>/<service-account>`).
    pub fn impersonated_by_node(&self) -> BTreeMap<String, u64> {
        self.impersonated
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Connections closed at accept, by reason (`per_ip_limit`, `connection_limit`).
    pub fn connections_refused(&self) -> BTreeMap<&'static str, u64> {
        read(&self.refused)
    }

    /// Connections closed by a deadline, by phase (`handshake`, `idle`, `request`).
    pub fn connections_timed_out(&self) -> BTreeMap<&'static str, u64> {
        read(&self.timed_out)
    }

    /// The counters in Prometheus text format, from a registry built for this scrape (never
    /// the global default): `outrider_ca_certificates_issued_total`,
    /// `outrider_ca_requests_denied_total{reason}`,
    /// `outrider_ca_connections_refused_total{reason}`,
    /// `outrider_ca_connections_timed_out_total{phase}`,
    /// `outrider_ca_impersonated_certificates_issued_total{node_account}`.
    pub fn encode_prometheus(&self) -> String {
        use prometheus::Encoder;
        let registry = prometheus::Registry::new();
        let issued = prometheus::IntCounter::new(
            "outrider_ca_certificates_issued_total",
            "Workload certificates issued by the CA service.",
        )
        .expect("a valid metric name");
        issued.inc_by(self.issued());
        let denied = labelled_counter(
            "outrider_ca_requests_denied_total",
            "Certificate requests refused by the CA service, by reason.",
            "reason",
            &self.denied_by_reason(),
        );
        let refused = labelled_counter(
            "outrider_ca_connections_refused_total",
            "Connections the CA service closed at accept, by reason (per_ip_limit, connection_limit).",
            "reason",
            &self.connections_refused(),
        );
        let timed_out = labelled_counter(
            "outrider_ca_connections_timed_out_total",
            "Connections the CA service closed by a deadline, by phase (handshake, idle, request).",
            "phase",
            &self.connections_timed_out(),
        );
        let impersonated = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "outrider_ca_impersonated_certificates_issued_total",
                "Certificates issued to node agents for other workloads (ImpersonatedIdentity), by node account.",
            ),
            &["node_account"],
        )
        .expect("a valid metric name");
        for (node, n) in self.impersonated_by_node() {
            impersonated.with_label_values(&[node.as_str()]).inc_by(n);
        }
        let _ = registry.register(Box::new(impersonated));
        let _ = registry.register(Box::new(issued));
        let _ = registry.register(Box::new(denied));
        let _ = registry.register(Box::new(refused));
        let _ = registry.register(Box::new(timed_out));
        let mut out = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    fn deny(&self, reason: &'static str) {
        bump(&self.denied, reason);
    }

    /// Counts a connection refused at accept; returns how many were refused for `reason`.
    fn refuse(&self, reason: &'static str) -> u64 {
        bump(&self.refused, reason)
    }

    fn time_out(&self, phase: &'static str) {
        bump(&self.timed_out, phase);
    }
}

fn bump(map: &Mutex<BTreeMap<&'static str, u64>>, key: &'static str) -> u64 {
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    let n = map.entry(key).or_default();
    *n += 1;
    *n
}

fn read(map: &Mutex<BTreeMap<&'static str, u64>>) -> BTreeMap<&'static str, u64> {
    map.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

fn labelled_counter(
    name: &str,
    help: &str,
    label: &str,
    values: &BTreeMap<&'static str, u64>,
) -> prometheus::IntCounterVec {
    let counter = prometheus::IntCounterVec::new(prometheus::Opts::new(name, help), &[label])
        .expect("a valid metric name");
    for (value, n) in values {
        counter.with_label_values(&[value]).inc_by(*n);
    }
    counter
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

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A certificate signed for a request.
struct Issued {
    id: SpiffeId,
    /// Set when a node agent asked for another workload's certificate.
    node: Option<NodeAgent>,
    chain: Vec<String>,
    serial_hex: String,
    /// Unix seconds.
    not_after: u64,
}

/// The node agent behind an impersonated issuance: its account and its own identity.
struct NodeAgent {
    account: NodeAccount,
    caller: SpiffeId,
}

/// A refusal: the gRPC status for the caller and the reason label for audit and metrics.
struct Denial {
    reason: &'static str,
    status: Status,
}

impl Denial {
    fn new(reason: &'static str, code: Code, message: impl Into<String>) -> Denial {
        Denial {
            reason,
            status: Status::new(code, message),
        }
    }
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

/// One open connection of a source address, counted against `max_connections_per_ip`
/// until dropped.
struct SourceSlot {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl SourceSlot {
    fn take(shared: &Arc<Shared>, ip: IpAddr) -> Option<SourceSlot> {
        // One address, however the socket reports it (IPv4 on a dual-stack listener).
        let ip = ip.to_canonical();
        let mut sources = shared.sources.lock().unwrap_or_else(|e| e.into_inner());
        let open = sources.entry(ip).or_default();
        if *open >= shared.config.max_connections_per_ip {
            return None;
        }
        *open += 1;
        Some(SourceSlot {
            shared: shared.clone(),
            ip,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut sources = self
            .shared
            .sources
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(open) = sources.get_mut(&self.ip) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                sources.remove(&self.ip);
            }
        }
    }
}

/// Requests in flight on one connection and when the last one ended: the idle clock.
struct Activity {
    in_flight: AtomicUsize,
    last: Mutex<Instant>,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            last: Mutex::new(Instant::now()),
        })
    }

    /// Marks a request in flight until the returned guard drops (also when it is cancelled).
    fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    /// When the connection becomes idle-expired, or `None` while a request is in flight.
    fn idle_deadline(&self, idle: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        Some(*self.last.lock().unwrap_or_else(|e| e.into_inner()) + idle)
    }
}

struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        *self.0.last.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn serve_connection(
    shared: Arc<Shared>,
    tls: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    remote: SocketAddr,
) {
    let config = &shared.config;
    let stream = match tokio::time::timeout(config.handshake_timeout, tls.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::debug!(%remote, error = %e, "CA service TLS handshake failed");
            return;
        }
        Err(_) => {
            shared.stats.time_out("handshake");
            tracing::debug!(%remote, "CA service TLS handshake timed out");
            return;
        }
    };
    // The verifier already checked the chain and the SVID rules.
    let peer = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(peer_spiffe_id);
    let activity = Activity::new();
    let service_activity = activity.clone();
    let service_shared = shared.clone();
    let service = hyper::service::service_fn(move |req| {
        let shared = service_shared.clone();
        let peer = peer.clone();
        let in_flight = service_activity.start();
        async move {
            let _in_flight = in_flight;
            let deadline = shared.config.request_timeout;
            let response = match tokio::time::timeout(
                deadline,
                route(shared.clone(), peer, remote, req),
            )
            .await
            {
                Ok(response) => response,
                Err(_) => {
                    // A client trickling its request body holds a stream; the deadline
                    // bounds it like a gRPC deadline would.
                    shared.stats.time_out("request");
                    tracing::info!(target: "outrider::ca::audit", decision = "denied", reason = "request_timeout", %remote, "the request did not arrive within {deadline:?}");
                    Status::deadline_exceeded(format!(
                        "the request did not arrive within {deadline:?}"
                    ))
                    .into_http()
                }
            };
            Ok::<_, Infallible>(response)
        }
    });
    let connection = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .max_header_list_size(16 * 1024)
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .keep_alive_interval(config.keepalive_interval)
        .keep_alive_timeout(config.keepalive_timeout)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    tokio::pin!(connection);
    // hyper has no idle timeout for HTTP/2 servers: watch the requests in flight and close
    // a connection that has had none for `idle_timeout` (a client that never sends the
    // HTTP/2 preface is idle from the start).
    let result = loop {
        let wake = activity
            .idle_deadline(config.idle_timeout)
            .unwrap_or_else(|| Instant::now() + config.idle_timeout);
        tokio::select! {
            result = connection.as_mut() => break result,
            () = tokio::time::sleep_until(wake.into()) => {
                if activity.idle_deadline(config.idle_timeout).is_some_and(|at| at <= Instant::now()) {
                    shared.stats.time_out("idle");
                    tracing::debug!(%remote, "CA service connection idle; closing");
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(GOAWAY_GRACE, connection.as_mut()).await;
                    return;
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%remote, error = %e, "CA service connection ended with an error");
    }
}

async fn route(
    shared: Arc<Shared>,
    peer: Option<SpiffeId>,
    remote: SocketAddr,
    req: http::Request<hyper::body::Incoming>,
) -> http::Response<tonic::body::Body> {
    if req.uri().path() != CREATE_CERTIFICATE_PATH {
        return Status::unimplemented(format!("unknown method {}", req.uri().path())).into_http();
    }
    let codec =
        tonic_prost::ProstCodec::<IstioCertificateResponse, IstioCertificateRequest>::default();
    let mut grpc = tonic::server::Grpc::new(codec).max_decoding_message_size(MAX_REQUEST_BYTES);
    let handler_shared = shared.clone();
    let service = tower::service_fn(move |request: tonic::Request<IstioCertificateRequest>| {
        let shared = handler_shared.clone();
        let peer = peer.clone();
        async move { shared.create_certificate(peer, remote, request) }
    });
    let mut response = grpc.unary(service, req).await;
    // tonic refuses an oversized message with OUT_OF_RANGE before our handler runs; gRPC's
    // convention for "message larger than the limit" is RESOURCE_EXHAUSTED.
    if response
        .headers()
        .get("grpc-status")
        .is_some_and(|v| v == "11")
    {
        response
            .headers_mut()
            .insert("grpc-status", http::HeaderValue::from_static("8"));
        shared.stats.deny("too_large");
        tracing::info!(target: "outrider::ca::audit", decision = "denied", reason = "too_large", %remote, "request larger than {MAX_REQUEST_BYTES} bytes");
    }
    response
}

impl Shared {
    /// Counts and logs a connection closed at accept (a warning for the first and then
    /// every 1000th, so a flood cannot flood the log too).
    fn refuse(&self, remote: SocketAddr, reason: &'static str) {
        let n = self.stats.refuse(reason);
        if n == 1 || n % 1000 == 0 {
            tracing::warn!(%remote, reason, refused = n, "CA service connection refused at accept");
        } else {
            tracing::debug!(%remote, reason, "CA service connection refused at accept");
        }
    }

    fn create_certificate(
        &self,
        peer: Option<SpiffeId>,
        remote: SocketAddr,
        request: tonic::Request<IstioCertificateRequest>,
    ) -> Result<tonic::Response<IstioCertificateResponse>, Status> {
        let bearer = request
            .metadata()
            .get("authorization")
            .map(|v| v.to_str().unwrap_or("").to_string());
        let message = request.into_inner();
        let auth = if peer.is_some() { "mtls" } else { "token" };
        match self.decide(peer.clone(), bearer.as_deref(), &message) {
            Ok(issued) => {
                self.stats.issued.fetch_add(1, Ordering::Relaxed);
                if let Some(node) = &issued.node {
                    *self
                        .stats
                        .impersonated
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(node.account.to_string())
                        .or_default() += 1;
                }
                tracing::info!(
                    target: "outrider::ca::audit",
                    decision = "issued",
                    identity = %issued.id,
                    node_agent = issued.node.as_ref().map(|n| tracing::field::display(&n.caller)),
                    auth,
                    serial = %issued.serial_hex,
                    not_after = issued.not_after,
                    requested_ttl_s = message.validity_duration,
                    %remote,
                    "certificate issued"
                );
                Ok(tonic::Response::new(IstioCertificateResponse {
                    cert_chain: issued.chain,
                }))
            }
            Err(denial) => {
                self.stats.deny(denial.reason);
                tracing::info!(
                    target: "outrider::ca::audit",
                    decision = "denied",
                    reason = denial.reason,
                    code = ?denial.status.code(),
                    auth,
                    peer = ?peer.map(|p| p.to_string()),
                    %remote,
                    "{}",
                    denial.status.message()
                );
                Err(denial.status)
            }
        }
    }

    /// Authenticate, authorize, apply policy, sign.
    fn decide(
        &self,
        peer: Option<SpiffeId>,
        bearer: Option<&str>,
        request: &IstioCertificateRequest,
    ) -> Result<Issued, Denial> {
        let material = self.material();
        let td = material.authority.trust_domain().to_string();
        let id = match (peer, bearer) {
            (Some(id), _) => {
                if id.trust_domain() != td
                    || id.namespace().is_none()
                    || id.service_account().is_none()
                {
                    return Err(Denial::new(
                        "bad_identity",
                        Code::PermissionDenied,
                        format!("the client certificate's identity {id} is not a workload of trust domain {td}"),
                    ));
                }
                if id == self.serving_id {
                    return Err(Denial::new(
                        "bad_identity",
                        Code::PermissionDenied,
                        "the CA's own identity cannot request certificates",
                    ));
                }
                id
            }
            (None, Some(header)) => {
                let token = header
                    .strip_prefix("Bearer ")
                    .or_else(|| header.strip_prefix("bearer "))
                    .ok_or_else(|| {
                        Denial::new(
                            "token_malformed",
                            Code::Unauthenticated,
                            "the authorization metadata is not `Bearer <token>`",
                        )
                    })?;
                let subject = self
                    .token_key
                    .verify(token.trim())
                    .map_err(|e: TokenError| {
                        Denial::new(e.reason(), Code::Unauthenticated, e.to_string())
                    })?;
                workload_id(&td, &subject.namespace, &subject.service_account).map_err(|e| {
                    Denial::new(
                        "bad_identity",
                        Code::PermissionDenied,
                        format!("the token names no valid identity: {e}"),
                    )
                })?
            }
            (None, None) => {
                return Err(Denial::new(
                    "no_credentials",
                    Code::Unauthenticated,
                    "no client certificate and no `authorization: Bearer <token>` metadata",
                ))
            }
        };
        let caller = id;
        let (id, node) = self.subject(&caller, request, &td)?;
        if !self.take_token(&id) {
            return Err(Denial::new(
                "rate_limited",
                Code::ResourceExhausted,
                format!("too many certificate requests for {id}; retry later"),
            ));
        }
        if request.csr.len() > MAX_CSR_BYTES {
            return Err(Denial::new(
                "too_large",
                Code::ResourceExhausted,
                format!(
                    "the CSR is {} bytes; the limit is {MAX_CSR_BYTES}",
                    request.csr.len()
                ),
            ));
        }
        let ttl = if request.validity_duration <= 0 {
            self.config.default_ttl
        } else {
            let asked = Duration::from_secs(request.validity_duration as u64);
            if asked > self.config.max_ttl {
                return Err(Denial::new(
                    "ttl_too_long",
                    Code::InvalidArgument,
                    format!(
                        "requested TTL {}s is greater than the max allowed TTL {}s",
                        asked.as_secs(),
                        self.config.max_ttl.as_secs()
                    ),
                ));
            }
            asked
        };
        let leaf = material
            .authority
            .sign_csr(request.csr.as_bytes(), &id, ttl)
            .map_err(|e| match e {
                CaError::BadCsr(_) => {
                    Denial::new("invalid_csr", Code::InvalidArgument, e.to_string())
                }
                other => Denial::new("internal", Code::Internal, other.to_string()),
            })?;
        let not_after = unix(leaf.not_after);
        self.note_issued(material.authority.serial_hex(), not_after);
        Ok(Issued {
            id,
            node: node.map(|account| NodeAgent { account, caller }),
            chain: vec![leaf.pem, material.bundle_pem.clone()],
            serial_hex: leaf.serial_hex,
            not_after,
        })
    }

    /// The identity to certify: the caller's own, or the one a trusted node agent names in
    /// `ImpersonatedIdentity` (with the node account that asked).
    fn subject(
        &self,
        caller: &SpiffeId,
        request: &IstioCertificateRequest,
        td: &str,
    ) -> Result<(SpiffeId, Option<NodeAccount>), Denial> {
        let Some(value) = request
            .metadata
            .as_ref()
            .and_then(|meta| meta.fields.get(IMPERSONATED_IDENTITY))
        else {
            return Ok((caller.clone(), None));
        };
        let Some(prost_types::value::Kind::StringValue(text)) = &value.kind else {
            return Err(Denial::new(
                "bad_identity",
                Code::InvalidArgument,
                format!("{IMPERSONATED_IDENTITY} must be a string (a SPIFFE ID)"),
            ));
        };
        let target = SpiffeId::parse(text.trim());
        // Asking for oneself is no impersonation (Istio's clients may always set the key).
        if target.as_ref().is_ok_and(|t| t == caller) {
            return Ok((caller.clone(), None));
        }
        let not_trusted = || {
            Denial::new(
                "impersonation",
                Code::PermissionDenied,
                format!("{caller} is not a trusted node account and may not request a certificate for {}", text.trim()),
            )
        };
        if self.impersonation.node_account_of(caller).is_none() {
            return Err(not_trusted());
        }
        let target = target
            .ok()
            .filter(|t| {
                t.trust_domain() == td && t.namespace().is_some() && t.service_account().is_some()
            })
            .ok_or_else(|| {
                Denial::new(
                    "bad_identity",
                    Code::InvalidArgument,
                    format!("{IMPERSONATED_IDENTITY} {text:?} is not a workload SPIFFE ID of trust domain {td}"),
                )
            })?;
        if target == self.serving_id {
            return Err(Denial::new(
                "bad_identity",
                Code::PermissionDenied,
                "the CA's own identity cannot be requested",
            ));
        }
        match self.impersonation.decide(caller, &target) {
            Ok(node) => Ok((target, node)),
            Err(Refusal::NotTrusted) => Err(not_trusted()),
            Err(Refusal::NotAllowed(node)) => Err(Denial::new(
                "impersonation_not_allowed",
                Code::PermissionDenied,
                format!("node account {node} may not request a certificate for {target} (not in its node identities)"),
            )),
        }
    }

    fn material(&self) -> Arc<Material> {
        self.material
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn take_token(&self, id: &SpiffeId) -> bool {
        let rate = f64::from(self.config.rate_per_minute) / 60.0;
        let burst = f64::from(self.config.burst.max(1));
        let now = Instant::now();
        let mut buckets = self.limiter.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > 100_000 {
            buckets.retain(|_, b| now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let bucket = buckets.entry(id.to_string()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        bucket.tokens =
            (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Remembers the latest notAfter per signing root, on disk, for `rotate-root --step retire`.
    fn note_issued(&self, root_serial: &str, not_after: u64) {
        let mut until = self.issued_until.lock().unwrap_or_else(|e| e.into_inner());
        let known = until
            .entry(root_serial.to_string())
            .or_insert_with(|| rotation::issued_until(&self.config.dir, root_serial));
        if not_after > *known {
            *known = not_after;
            if let Err(e) = rotation::record_issued_until(&self.config.dir, root_serial, not_after)
            {
                tracing::warn!(error = %e, "cannot record the validity of issued leaves");
            }
        }
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

/// Serves `GET /stats/prometheus` (HTTP/1.1) with the CA's counters; 404 elsewhere.
async fn serve_metrics(listener: TcpListener, stats: Arc<CaStats>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let stats = stats.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let stats = stats.clone();
                    async move {
                        let response = if req.uri().path() == "/stats/prometheus" {
                            http::Response::builder()
                                .header("content-type", "text/plain; version=0.0.4")
                                .body(http_body_util::Full::new(bytes::Bytes::from(
                                    stats.encode_prometheus(),
                                )))
                        } else {
                            http::Response::builder()
                                .status(http::StatusCode::NOT_FOUND)
                                .body(http_body_util::Full::new(bytes::Bytes::from_static(
                                    b"not found\n",
                                )))
                        };
                        response
                    }
                });
            let _ = tokio::time::timeout(
                Duration::from_secs(30),
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service),
            )
            .await;
        });
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
