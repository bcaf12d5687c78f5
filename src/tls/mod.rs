//! rustls configurations built on the live certificate store, with SPIFFE verifiers.
//!
//! The configurations are built once: the server certificate, the client certificate and the
//! trust bundle are looked up in the [`CertStore`] on every handshake, so a rotation applies
//! to the next handshake without rebuilding anything, and established connections are never
//! touched. TLS 1.3 only. Resumed sessions are re-judged against the live store too (see
//! [`resumption`]). The edge's TLS (users' own certificates, X.509 v1 included) is apart, in [`edge`].

pub mod edge;
pub mod origination;
pub mod resumption;
mod ticketer;
pub mod verifier;

use std::fmt;
use std::sync::{Arc, LazyLock};

use rustls::client::{ResolvesClientCert, Resumption};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::time_provider::{DefaultTimeProvider, TimeProvider};
use rustls::{CertificateError, CipherSuite, ClientConfig, ServerConfig, SignatureScheme};
use rustls_pki_types::CertificateDer;

use crate::identity::svid::{svid_id, PROVIDER};
use crate::identity::{CertStore, SpiffeId, SvidError};

pub use resumption::{check_resumed, TicketCache};
pub use verifier::{SpiffeClientVerifier, SpiffeServerVerifier};

/// The crypto provider of mesh connections: aws-lc-rs with TLS_AES_128_GCM_SHA256 first.
/// Both ends of a mesh hop are sidecars, so the client's order decides: AES-128-GCM costs
/// less CPU per byte than AES-256-GCM (10 rounds instead of 14; see BENCHMARKS.md,
/// `cipher/*`) and is what TLS 1.3 makes mandatory. AES-256 and ChaCha20 stay offered for
/// peers that prefer them.
pub fn mesh_provider() -> Arc<CryptoProvider> {
    static MESH: LazyLock<Arc<CryptoProvider>> = LazyLock::new(|| {
        let mut provider = (**PROVIDER).clone();
        provider
            .cipher_suites
            .sort_by_key(|s| s.suite() != CipherSuite::TLS13_AES_128_GCM_SHA256);
        Arc::new(provider)
    });
    MESH.clone()
}

/// ALPN values a mesh client offers (Istio's TCP mesh protocols).
pub const MESH_ALPN: &[&[u8]] = &[b"istio-peer-exchange", b"istio"];

/// The inbound (server) configuration: client certificate required and verified as an SVID
/// against the live bundle; server certificate from the live store.
///
/// No ALPN is negotiated: the sidecar terminates TLS and forwards bytes to the app, so agreeing
/// on `h2` with a client would make it speak HTTP/2 to an app that may only know HTTP/1.1, and
/// offering a fixed list would fail clients whose ALPN is not on it. Mesh clients still send
/// their ALPN; the inbound sniffer reads it from the ClientHello to tell mesh mTLS apart.
pub fn server_config(store: &CertStore) -> Arc<ServerConfig> {
    server_config_with_time(store, Arc::new(DefaultTimeProvider))
}

/// [`server_config`] with an injected clock: certificate validity (and ticket age) are judged
/// at the time `time` reports, so tests can move time without sleeping.
pub fn server_config_with_time(
    store: &CertStore,
    time: Arc<dyn TimeProvider>,
) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder_with_details(mesh_provider(), time.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("the aws-lc-rs provider supports TLS 1.3")
        .with_client_cert_verifier(Arc::new(SpiffeClientVerifier::new(store.clone())))
        .with_cert_resolver(Arc::new(StoreCertResolver::new(store.clone())));
    config.alpn_protocols = Vec::new();
    // Stateless TLS 1.3 tickets (encrypted with a key that rotates every few hours): the
    // server keeps nothing per client, so no client's tickets are evicted by another's, and a
    // reconnect skips certificate signing and verification. The resumed session carries the
    // client's certificate chain, so its SPIFFE ID is still known to policy and metrics.
    guard_resumption(&mut config, store, time);
    Arc::new(config)
}

/// Makes a server that verifies client SVIDs against `store` resume only sessions whose
/// client chain is still valid (by `time`) and anchored by the current bundle: stateless
/// tickets under a key that declines any other (the handshake goes on as a full one) and is
/// replaced when the bundle changes; no stateful session cache, which would resume unchecked.
/// Sessions without a client certificate are not resumed.
pub fn guard_resumption(config: &mut ServerConfig, store: &CertStore, time: Arc<dyn TimeProvider>) {
    config.ticketer = Arc::new(ticketer::IdentityTicketer::new(store.clone(), time));
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
}

/// The outbound (client) configuration: presents the live SVID, accepts only a server SVID of
/// the live bundle whose ID is in `allowed` (secure naming; empty refuses every server).
/// ALPN: the mesh protocols. Sessions resume from a [`TicketCache`] kept in the configuration,
/// so share one configuration per destination rather than per connection. The cache forgets
/// its tickets when the trust bundle changes; a resumed session must still pass
/// [`check_resumed`] right after the handshake.
pub fn client_config(store: &CertStore, allowed: Vec<SpiffeId>) -> Arc<ClientConfig> {
    client_config_with_time(store, allowed, Arc::new(DefaultTimeProvider))
}

/// [`client_config`] with an injected clock (see [`server_config_with_time`]).
pub fn client_config_with_time(
    store: &CertStore,
    allowed: Vec<SpiffeId>,
    time: Arc<dyn TimeProvider>,
) -> Arc<ClientConfig> {
    client_config_with_provider(store, allowed, time, mesh_provider())
}

/// [`client_config_with_time`] with another crypto provider (benchmarks compare cipher
/// suite orders with it).
pub fn client_config_with_provider(
    store: &CertStore,
    allowed: Vec<SpiffeId>,
    time: Arc<dyn TimeProvider>,
    provider: Arc<CryptoProvider>,
) -> Arc<ClientConfig> {
    // `dangerous()` is rustls' only door to a custom server verifier; this one still does full
    // webpki chain validation (see `verifier`), it only replaces DNS-name matching by SPIFFE IDs.
    let mut config = ClientConfig::builder_with_details(provider, time)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("the aws-lc-rs provider supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(
            store.clone(),
            allowed,
        )))
        .with_client_cert_resolver(Arc::new(StoreCertResolver::new(store.clone())));
    config.alpn_protocols = MESH_ALPN.iter().map(|p| p.to_vec()).collect();
    config.resumption = Resumption::store(Arc::new(TicketCache::bound_to(store)));
    Arc::new(config)
}

/// `config` with client-side session resumption turned off: every connection made with it
/// does a full handshake (certificate signing and verification on both sides). For users who
/// must, and for benchmarks comparing full and resumed handshakes (`--no-resumption`).
pub fn without_resumption(config: &ClientConfig) -> Arc<ClientConfig> {
    let mut config = config.clone();
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// The SPIFFE ID of the leaf (first) certificate of a verified peer chain.
pub fn peer_spiffe_id(certs: &[CertificateDer<'_>]) -> Option<SpiffeId> {
    svid_id(certs.first()?).ok()
}

/// A short snake_case label for a handshake failure, for metrics and logs.
pub fn failure_reason(err: &rustls::Error) -> &'static str {
    match err {
        rustls::Error::InvalidCertificate(ce) => match ce {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not_yet_valid"
            }
            CertificateError::UnknownIssuer => "unknown_issuer",
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "bad_eku"
            }
            CertificateError::BadSignature => "bad_signature",
            CertificateError::BadEncoding => "bad_encoding",
            CertificateError::Revoked => "revoked",
            CertificateError::Other(other) => other
                .0
                .downcast_ref::<SvidError>()
                .map(SvidError::reason)
                .unwrap_or("other"),
            _ => "other",
        },
        rustls::Error::NoCertificatesPresented => "no_client_cert",
        rustls::Error::AlertReceived(_) => "alert_received",
        rustls::Error::NoApplicationProtocol => "no_application_protocol",
        rustls::Error::PeerIncompatible(_) => "peer_incompatible",
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            "invalid_message"
        }
        _ => "other",
    }
}

/// Serves the live SVID as both server and client certificate.
pub(crate) struct StoreCertResolver {
    store: CertStore,
}

impl StoreCertResolver {
    pub(crate) fn new(store: CertStore) -> Self {
        StoreCertResolver { store }
    }

    fn certified_key(&self) -> Option<Arc<CertifiedKey>> {
        self.store
            .current()
            .map(|identity| identity.certified_key())
    }
}

impl fmt::Debug for StoreCertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreCertResolver")
            .field("trust_domain", &self.store.trust_domain())
            .finish()
    }
}

impl ResolvesServerCert for StoreCertResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.certified_key()
    }
}

impl ResolvesClientCert for StoreCertResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.certified_key()
    }

    fn has_certs(&self) -> bool {
        true
    }
}
