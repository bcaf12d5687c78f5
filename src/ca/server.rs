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
//! - The CA directory is reread every second: root rotation steps (see
//!   [`crate::ca::rotation`]) apply without a restart, and the serving certificate is
//!   reissued when the signing root changes or half its life has passed.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tonic::{Code, Status};

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
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_CONNECTIONS: usize = 1024;
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
}

/// Decisions counted since start; read by the metrics scrape.
#[derive(Debug, Default)]
pub struct CaStats {
    issued: AtomicU64,
    denied: Mutex<BTreeMap<&'static str, u64>>,
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

    /// The counters in Prometheus text format, from a registry built for this scrape (never
    /// the global default): `outrider_ca_certificates_issued_total`,
    /// `outrider_ca_requests_denied_total{reason}`.
    pub fn encode_prometheus(&self) -> String {
        use prometheus::Encoder;
        let registry = prometheus::Registry::new();
        let issued = prometheus::IntCounter::new(
            "outrider_ca_certificates_issued_total",
            "Workload certificates issued by the CA service.",
        )
        .expect("a valid metric name");
        issued.inc_by(self.issued());
        let denied = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "outrider_ca_requests_denied_total",
                "Certificate requests refused by the CA service, by reason.",
            ),
            &["reason"],
        )
        .expect("a valid metric name");
        for (reason, n) in self.denied_by_reason() {
            denied.with_label_values(&[reason]).inc_by(n);
        }
        let _ = registry.register(Box::new(issued));
        let _ = registry.register(Box::new(denied));
        let mut out = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    fn deny(&self, reason: &'static str) {
        *self
            .denied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(reason)
            .or_default() += 1;
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
    limiter: Mutex<HashMap<String, Bucket>>,
    issued_until: Mutex<HashMap<String, u64>>,
    stats: Arc<CaStats>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
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
        let material = rotation::load_material(&config.dir)?;
        let token_key = TokenKey::load_or_create(&config.dir)?;
        let td = material.authority.trust_domain().to_string();
        let serving_id = workload_id(&td, CA_NAMESPACE, CA_SERVICE_ACCOUNT)?;
        let shared = Arc::new(Shared {
            serving: CertStore::new(&td),
            serving_id,
            serving_life: Mutex::new((UNIX_EPOCH, UNIX_EPOCH, 0)),
            material: RwLock::new(Arc::new(material)),
            token_key,
            limiter: Mutex::new(HashMap::new()),
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
        let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        tracing::info!(
            addr = %self.local_addr(),
            trust_domain = %self.shared.serving.trust_domain(),
            serving_id = %self.shared.serving_id,
            dns = ?self.shared.config.dns,
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
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                tracing::warn!(%remote, "CA service at its connection limit; closing");
                continue;
            };
            let tls = tls.clone();
            let shared = self.shared.clone();
            tokio::spawn(async move {
                let _permit = permit;
                serve_connection(shared, tls, tcp, remote).await;
            });
        }
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
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::debug!(%remote, error = %e, "CA service TLS handshake failed");
            return;
        }
        Err(_) => {
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
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        let peer = peer.clone();
        async move { Ok::<_, Infallible>(route(shared, peer, remote, req).await) }
    });
    let result = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .max_header_list_size(16 * 1024)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .await;
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
            Ok((id, chain, serial, not_after)) => {
                self.stats.issued.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    target: "outrider::ca::audit",
                    decision = "issued",
                    identity = %id,
                    auth,
                    serial = %serial,
                    not_after = not_after,
                    requested_ttl_s = message.validity_duration,
                    %remote,
                    "certificate issued"
                );
                Ok(tonic::Response::new(IstioCertificateResponse {
                    cert_chain: chain,
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

    /// Authenticate, authorize, apply policy, sign. Returns the identity, the response chain,
    /// the serial and notAfter (Unix seconds).
    fn decide(
        &self,
        peer: Option<SpiffeId>,
        bearer: Option<&str>,
        request: &IstioCertificateRequest,
    ) -> Result<(SpiffeId, Vec<String>, String, u64), Denial> {
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
        if let Some(meta) = &request.metadata {
            if meta.fields.contains_key("ImpersonatedIdentity") {
                return Err(Denial::new(
                    "impersonation",
                    Code::PermissionDenied,
                    format!("{id} may not request a certificate for another identity"),
                ));
            }
        }
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
        Ok((
            id,
            vec![leaf.pem, material.bundle_pem.clone()],
            leaf.serial_hex,
            not_after,
        ))
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
        let issued = material
            .authority
            .issue(&self.serving_id, SERVING_TTL, &self.config.dns)?;
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
