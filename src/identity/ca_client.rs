//! The `ca` identity source: the sidecar obtains and renews its SVID from the mesh CA over
//! Istio's CA protocol (`IstioCertificateService/CreateCertificate`), like istio-agent.
//!
//! Every request uses a fresh P-256 key generated here (it never leaves the process) and a CSR
//! for the expected identity. The first request authenticates with the bootstrap token read
//! from `--token-file` (reread each time: projected tokens rotate); renewals present the
//! current SVID over mTLS while it is valid. The response is accepted only if its leaf names
//! exactly the expected identity and the store validates the chain against the roots the CA
//! returned; those roots become the trust bundle, so the bundle follows root rotation.
//!
//! Renewal happens at 50 % ± 1 % of the certificate's life (Istio's `SECRET_GRACE_PERIOD_RATIO`
//! with jitter); failures retry with capped exponential backoff (1 s → 60 s, and never more
//! than an eighth of the remaining life), and the current certificate keeps serving until it
//! expires. Without a valid certificate handshakes fail; there is no plaintext fallback.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::uri::PathAndQuery;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

use crate::ca_protocol::{
    IstioCertificateRequest, IstioCertificateResponse, CREATE_CERTIFICATE_PATH,
};
use crate::identity::svid::{svid_id, PROVIDER};
use crate::identity::{CertStore, IdentityError, SpiffeId};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
const RETRY_FLOOR: Duration = Duration::from_millis(250);

/// Where and how to obtain certificates from the mesh CA.
#[derive(Debug, Clone)]
pub struct CaSource {
    /// `host:port` of the CA service.
    pub address: String,
    /// The CA's trust anchor(s), PEM: authenticate the CA service on the first connection.
    pub root_pem: Vec<u8>,
    /// The bootstrap token (a JWT), read on each request that needs it.
    pub token_file: PathBuf,
    /// Validity asked for.
    pub ttl: Duration,
    /// The identity this sidecar must receive; anything else is refused.
    pub expected: SpiffeId,
    /// The DNS name the CA's certificate must hold; `None` = the host part of `address`.
    pub server_name: Option<String>,
}

/// Where the mesh CA is and what to present to it, as configured (`--ca-address`,
/// `--ca-root`, `--token-file`, `--cert-ttl`, `--ca-server-name`).
#[derive(Debug, Clone)]
pub struct CaClientConfig {
    /// `host:port` of the CA service.
    pub address: String,
    /// PEM file with the CA's root certificate(s).
    pub ca_root: PathBuf,
    /// File holding the bootstrap token.
    pub token_file: PathBuf,
    /// Validity to ask for.
    pub ttl: Duration,
    /// DNS name expected in the CA's serving certificate (`None`: the host of `address`).
    pub server_name: Option<String>,
}

impl CaSource {
    /// The source for `expected`, reading the CA's root file now: it must hold a certificate.
    pub fn from_config(config: &CaClientConfig, expected: SpiffeId) -> anyhow::Result<CaSource> {
        let root = &config.ca_root;
        let root_pem = std::fs::read(root)
            .map_err(|e| anyhow::anyhow!("cannot read --ca-root {}: {e}", root.display()))?;
        if CertificateDer::pem_slice_iter(&root_pem).next().is_none() {
            anyhow::bail!("--ca-root {} holds no PEM certificate", root.display());
        }
        Ok(CaSource {
            address: config.address.clone(),
            root_pem,
            token_file: config.token_file.clone(),
            ttl: config.ttl,
            expected,
            server_name: config.server_name.clone(),
        })
    }
}

/// Why one certificate request failed (the source retries; the store counts it).
#[derive(Debug, thiserror::Error)]
pub enum CaClientError {
    #[error("cannot connect to the CA at {address}: {detail}")]
    Connect { address: String, detail: String },
    #[error("TLS with the CA at {address} failed: {detail}")]
    Tls { address: String, detail: String },
    #[error("the CA at {address} did not answer within {timeout:?}")]
    Timeout { address: String, timeout: Duration },
    #[error("cannot read the bootstrap token {path}: {source}")]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the CA refused the request: {code:?}: {message}")]
    Refused { code: tonic::Code, message: String },
    #[error("the CA's response is unusable: {0}")]
    BadResponse(String),
    #[error("the CA issued a certificate for {got}, expected {expected}")]
    WrongIdentity { got: String, expected: String },
    #[error("the certificate store refused the CA's certificate: {0}")]
    Rejected(#[from] IdentityError),
    #[error("cannot make the key or CSR: {0}")]
    Csr(String),
}

/// Obtains and renews the SVID forever, publishing each one to `store`. Never returns.
pub async fn run(store: CertStore, source: CaSource) {
    let mut ca = CaClient::new(source);
    let mut backoff = BACKOFF_START;
    loop {
        match ca.fetch(&store).await {
            Ok(fetched) => {
                backoff = BACKOFF_START;
                let ratio = 0.5 + (rand::random::<f64>() * 0.02 - 0.01);
                let delay = renew_delay(fetched.fetched_at, fetched.not_after, ratio);
                tracing::info!(
                    spiffe_id = %ca.source.expected,
                    serial = %fetched.serial_hex,
                    renew_in = ?delay,
                    "certificate obtained from the CA"
                );
                tokio::time::sleep(delay).await;
            }
            Err(e) => {
                store.record_rotation_failure();
                let remaining = store
                    .current()
                    .and_then(|c| c.svid.not_after.duration_since(SystemTime::now()).ok());
                let delay = retry_delay(backoff, remaining);
                tracing::warn!(
                    error = %e,
                    retry_in = ?delay,
                    current_valid_for = ?remaining,
                    "cannot obtain a certificate from the CA; keeping the current one"
                );
                tokio::time::sleep(delay).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// What one successful request published.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub serial_hex: String,
    pub not_after: SystemTime,
    pub fetched_at: SystemTime,
}

/// A client of the CA service for one identity; remembers the roots the CA last returned.
pub struct CaClient {
    source: CaSource,
    /// Trust anchors for the CA service: the configured ones plus the last bundle returned.
    learned_roots: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for CaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaClient")
            .field("source", &self.source.address)
            .field("expected", &self.source.expected)
            .finish_non_exhaustive()
    }
}

impl CaClient {
    pub fn new(source: CaSource) -> CaClient {
        CaClient {
            source,
            learned_roots: Vec::new(),
        }
    }

    /// One request: fresh key + CSR, call the CA, check and publish the result.
    pub async fn fetch(&mut self, store: &CertStore) -> Result<Fetched, CaClientError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaClientError::Csr(e.to_string()))?;
        let csr = csr_pem(&key, &self.source.expected)?;
        // Renewals authenticate with the current SVID while it is valid; else the token.
        let client_cert = store
            .current()
            .filter(|c| c.svid.id == self.source.expected && c.svid.not_after > SystemTime::now());
        let token = match client_cert {
            Some(_) => None,
            None => Some(read_token(&self.source.token_file)?),
        };
        let request = IstioCertificateRequest {
            csr,
            validity_duration: i64::try_from(self.source.ttl.as_secs()).unwrap_or(i64::MAX),
            metadata: None,
        };
        let config = self.tls_config(client_cert.map(|c| c.certified_key()));
        let host = self
            .source
            .server_name
            .clone()
            .unwrap_or_else(|| host_of(&self.source.address).to_string());
        let response = tokio::time::timeout(
            REQUEST_TIMEOUT,
            call(&self.source.address, &host, config, token, request),
        )
        .await
        .map_err(|_| CaClientError::Timeout {
            address: self.source.address.clone(),
            timeout: REQUEST_TIMEOUT,
        })??;
        let fetched_at = SystemTime::now();
        let chain = response.cert_chain;
        let Some((roots_pem, chain_pems)) = chain.split_last().filter(|(_, rest)| !rest.is_empty())
        else {
            return Err(CaClientError::BadResponse(format!(
                "cert_chain has {} element(s); expected the leaf and the root(s)",
                chain.len()
            )));
        };
        let chain_pem = chain_pems.concat();
        let leaf = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .next()
            .ok_or_else(|| CaClientError::BadResponse("no leaf certificate".into()))?
            .map_err(|e| CaClientError::BadResponse(format!("leaf is not PEM: {e}")))?;
        let got = svid_id(&leaf).map_err(|e| CaClientError::BadResponse(e.to_string()))?;
        if got != self.source.expected {
            return Err(CaClientError::WrongIdentity {
                got: got.to_string(),
                expected: self.source.expected.to_string(),
            });
        }
        store.publish_pem(
            chain_pem.as_bytes(),
            key.serialize_pem().as_bytes(),
            roots_pem.as_bytes(),
        )?;
        self.learned_roots = CertificateDer::pem_slice_iter(roots_pem.as_bytes())
            .filter_map(Result::ok)
            .collect();
        let current = store
            .current()
            .ok_or_else(|| CaClientError::BadResponse("nothing was published".into()))?;
        Ok(Fetched {
            serial_hex: current.svid.serial_hex.clone(),
            not_after: current.svid.not_after,
            fetched_at,
        })
    }

    fn tls_config(&self, client_cert: Option<Arc<CertifiedKey>>) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        let configured =
            CertificateDer::pem_slice_iter(&self.source.root_pem).filter_map(Result::ok);
        for cert in configured.chain(self.learned_roots.iter().cloned()) {
            // A root that cannot be an anchor is skipped; an empty store fails the handshake.
            let _ = roots.add(cert);
        }
        let builder = ClientConfig::builder_with_provider(PROVIDER.clone())
            .with_safe_default_protocol_versions()
            .expect("the aws-lc-rs provider supports TLS 1.2 and 1.3")
            .with_root_certificates(roots);
        let mut config = match client_cert {
            Some(key) => builder.with_client_cert_resolver(Arc::new(PresentSvid(key))),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(config)
    }
}

/// One `CreateCertificate` call without a client certificate, trusting `root_pem` for the
/// CA's serving certificate (which must hold the DNS name `server_name`). The request and
/// the response are Istio's messages as they are: nothing is checked or published. For tools
/// and tests; the sidecar uses [`run`].
pub async fn create_certificate(
    address: &str,
    server_name: &str,
    root_pem: &[u8],
    token: Option<&str>,
    request: IstioCertificateRequest,
) -> Result<IstioCertificateResponse, CaClientError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(root_pem).filter_map(Result::ok) {
        let _ = roots.add(cert);
    }
    let mut config = ClientConfig::builder_with_provider(PROVIDER.clone())
        .with_safe_default_protocol_versions()
        .expect("the aws-lc-rs provider supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    tokio::time::timeout(
        REQUEST_TIMEOUT,
        call(
            address,
            server_name,
            Arc::new(config),
            token.map(str::to_string),
            request,
        ),
    )
    .await
    .map_err(|_| CaClientError::Timeout {
        address: address.to_string(),
        timeout: REQUEST_TIMEOUT,
    })?
}

/// Connects (TCP, TLS, HTTP/2) and makes the unary call.
async fn call(
    address: &str,
    host: &str,
    config: Arc<ClientConfig>,
    token: Option<String>,
    request: IstioCertificateRequest,
) -> Result<IstioCertificateResponse, CaClientError> {
    let address = address.to_string();
    let host = host.to_string();
    let server_name = ServerName::try_from(host.clone()).map_err(|e| CaClientError::Tls {
        address: address.clone(),
        detail: format!("invalid server name {host:?}: {e}"),
    })?;
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&address))
        .await
        .map_err(|_| CaClientError::Timeout {
            address: address.clone(),
            timeout: CONNECT_TIMEOUT,
        })?
        .map_err(|e| CaClientError::Connect {
            address: address.clone(),
            detail: e.to_string(),
        })?;
    let _ = tcp.set_nodelay(true);
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(server_name, tcp)
        .await
        .map_err(|e| CaClientError::Tls {
            address: address.clone(),
            detail: e.to_string(),
        })?;
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .map_err(|e| CaClientError::Connect {
        address: address.clone(),
        detail: format!("HTTP/2: {e}"),
    })?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let service = tower::service_fn(move |req: http::Request<tonic::body::Body>| {
        let mut sender = sender.clone();
        async move { sender.send_request(req).await }
    });
    let origin: http::Uri =
        format!("https://{host}")
            .parse()
            .map_err(|e| CaClientError::Connect {
                address: address.clone(),
                detail: format!("bad origin: {e}"),
            })?;
    let mut grpc = tonic::client::Grpc::with_origin(service, origin);
    let mut request = tonic::Request::new(request);
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().map_err(|_| {
            CaClientError::Csr("the token holds characters not allowed in metadata".into())
        })?;
        request.metadata_mut().insert("authorization", value);
    }
    let codec =
        tonic_prost::ProstCodec::<IstioCertificateRequest, IstioCertificateResponse>::default();
    let result = grpc
        .unary(
            request,
            PathAndQuery::from_static(CREATE_CERTIFICATE_PATH),
            codec,
        )
        .await;
    driver.abort();
    result
        .map(tonic::Response::into_inner)
        .map_err(|status| CaClientError::Refused {
            code: status.code(),
            message: status.message().to_string(),
        })
}

fn csr_pem(key: &KeyPair, id: &SpiffeId) -> Result<String, CaClientError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names =
        vec![SanType::URI(id.to_string().try_into().map_err(
            |e: rcgen::Error| CaClientError::Csr(e.to_string()),
        )?)];
    params
        .serialize_request(key)
        .and_then(|csr| csr.pem())
        .map_err(|e| CaClientError::Csr(e.to_string()))
}

fn read_token(path: &PathBuf) -> Result<String, CaClientError> {
    std::fs::read_to_string(path)
        .map(|t| t.trim().to_string())
        .map_err(|source| CaClientError::Token {
            path: path.clone(),
            source,
        })
}

fn host_of(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    address.rsplit_once(':').map_or(address, |(host, _)| host)
}

/// Time from `fetched_at` to the renewal: `expiry − ratio·(expiry − fetched_at)` (Istio).
pub fn renew_delay(fetched_at: SystemTime, not_after: SystemTime, ratio: f64) -> Duration {
    let life = not_after.duration_since(fetched_at).unwrap_or_default();
    life.mul_f64((1.0 - ratio).clamp(0.0, 1.0))
}

/// The wait before retrying a failed request: the backoff, but never more than an eighth of
/// what is left of the current certificate (with a floor), so a short outage near expiry is
/// retried often enough.
pub fn retry_delay(backoff: Duration, remaining: Option<Duration>) -> Duration {
    match remaining {
        Some(left) => backoff.min((left / 8).max(RETRY_FLOOR)),
        None => backoff,
    }
}

/// Presents the current SVID as the client certificate.
#[derive(Debug)]
struct PresentSvid(Arc<CertifiedKey>);

impl ResolvesClientCert for PresentSvid {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_at_half_life() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let day = Duration::from_secs(86_400);
        assert_eq!(renew_delay(t0, t0 + day, 0.5), day / 2);
        let early = renew_delay(t0, t0 + day, 0.51);
        let late = renew_delay(t0, t0 + day, 0.49);
        assert!(early < day / 2 && late > day / 2);
        assert!((day / 2 - early) <= Duration::from_secs(865));
        assert_eq!(renew_delay(t0 + day, t0, 0.5), Duration::ZERO);
    }

    #[test]
    fn retries_back_off_but_stay_inside_the_remaining_life() {
        assert_eq!(
            retry_delay(Duration::from_secs(60), None),
            Duration::from_secs(60)
        );
        assert_eq!(
            retry_delay(Duration::from_secs(60), Some(Duration::from_secs(3600))),
            Duration::from_secs(60)
        );
        assert_eq!(
            retry_delay(Duration::from_secs(8), Some(Duration::from_secs(8))),
            Duration::from_secs(1)
        );
        assert_eq!(
            retry_delay(Duration::from_secs(8), Some(Duration::ZERO)),
            RETRY_FLOOR
        );
    }

    #[test]
    fn hosts() {
        assert_eq!(host_of("ca:15012"), "ca");
        assert_eq!(host_of("[::1]:15012"), "::1");
        assert_eq!(host_of("ca"), "ca");
    }

    #[test]
    fn a_root_file_without_a_certificate_is_refused() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/age").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = |root: &str| CaClientConfig {
            address: "ca:15012".into(),
            ca_root: dir.path().join(root),
            token_file: dir.path().join("token"),
            ttl: Duration::from_secs(3600),
            server_name: None,
        };
        let missing = CaSource::from_config(&config("absent.pem"), id.clone()).unwrap_err();
        assert!(
            missing.to_string().contains("cannot read --ca-root"),
            "{missing}"
        );
        std::fs::write(dir.path().join("empty.pem"), "not a certificate\n").unwrap();
        let empty = CaSource::from_config(&config("empty.pem"), id).unwrap_err();
        assert!(
            empty.to_string().contains("holds no PEM certificate"),
            "{empty}"
        );
    }
}
