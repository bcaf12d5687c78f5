//! The bad-certificate matrix: every malformed or untrusted SVID is refused over a real TLS
//! handshake on 127.0.0.1, with the reason label logs and metrics will use.
//!
//! "Server side" = outrider's `server_config` verifying a client that presents the bad
//! certificate; "client side" = outrider's `client_config` verifying a server that presents it.
//! The peer under test uses plain rustls configs (test-only shortcuts live here, not in src/).

use std::sync::Arc;
use std::time::Duration;

use outrider::identity::{CertStore, SpiffeId};
use outrider::tls::{client_config, failure_reason, peer_spiffe_id, server_config, MESH_ALPN};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const TD: &str = "cluster.local";
const TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Test PKI

struct Ca {
    params: CertificateParams,
    key: KeyPair,
    cert: rcgen::Certificate,
    /// What a leaf of this CA carries after itself: the intermediates up to (not incl.) the root.
    extra_der: Vec<CertificateDer<'static>>,
    extra_pem: String,
}

impl Ca {
    fn root(td: &str) -> Ca {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params = ca_params(td, "root");
        let cert = params.self_signed(&key).unwrap();
        Ca {
            params,
            key,
            cert,
            extra_der: Vec::new(),
            extra_pem: String::new(),
        }
    }

    fn intermediate(&self, td: &str) -> Ca {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params = ca_params(td, "intermediate");
        let cert = params.signed_by(&key, &self.issuer()).unwrap();
        let mut extra_der = vec![cert.der().clone()];
        extra_der.extend(self.extra_der.iter().cloned());
        let extra_pem = format!("{}{}", cert.pem(), self.extra_pem);
        Ca {
            params,
            key,
            cert,
            extra_der,
            extra_pem,
        }
    }

    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key)
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A leaf signed by this CA; `tweak` edits the good profile first.
    fn leaf(&self, tweak: impl FnOnce(&mut CertificateParams)) -> Leaf {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = leaf_params(&format!("spiffe://{TD}/ns/default/sa/age"));
        tweak(&mut params);
        let cert = params.signed_by(&key, &self.issuer()).unwrap();
        let mut chain = vec![cert.der().clone()];
        chain.extend(self.extra_der.iter().cloned());
        Leaf {
            chain,
            chain_pem: format!("{}{}", cert.pem(), self.extra_pem),
            key,
        }
    }
}

struct Leaf {
    chain: Vec<CertificateDer<'static>>,
    chain_pem: String,
    key: KeyPair,
}

impl Leaf {
    fn self_signed(tweak: impl FnOnce(&mut CertificateParams)) -> Leaf {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = leaf_params(&format!("spiffe://{TD}/ns/default/sa/age"));
        tweak(&mut params);
        let cert = params.self_signed(&key).unwrap();
        Leaf {
            chain: vec![cert.der().clone()],
            chain_pem: cert.pem(),
            key,
        }
    }

    fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivatePkcs8KeyDer::from(self.key.serialize_der()).into()
    }
}

fn ca_params(td: &str, what: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{td} {what}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.subject_alt_names = vec![uri(&format!("spiffe://{td}"))];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::from_secs(3600);
    params.not_after = now + Duration::from_secs(86_400);
    params
}

fn leaf_params(id: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![uri(id)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::from_secs(120);
    params.not_after = now + Duration::from_secs(3600);
    params
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

fn id(sa: &str) -> SpiffeId {
    SpiffeId::istio(TD, "default", sa).unwrap()
}

/// A store of `TD` holding a good SVID for `sa`, signed by `ca`, trusting `roots`.
fn store(ca: &Ca, sa: &str, roots: &str) -> CertStore {
    let leaf = ca.leaf(|p| p.subject_alt_names = vec![uri(&id(sa).to_string())]);
    let store = CertStore::new(TD);
    store
        .publish_pem(
            leaf.chain_pem.as_bytes(),
            leaf.key.serialize_pem().as_bytes(),
            roots.as_bytes(),
        )
        .unwrap();
    store
}

// ---------------------------------------------------------------------------------------------
// Handshakes

/// Accepts any server certificate: lets the bad peer under test reach outrider's server.
#[derive(Debug)]
pub(crate) struct AcceptAnyServer;

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn bad_client_config(leaf: Option<&Leaf>) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer));
    let mut config = match leaf {
        Some(leaf) => builder
            .with_client_auth_cert(leaf.chain.clone(), leaf.key_der())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = MESH_ALPN.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

fn bad_server_config(leaf: &Leaf) -> Arc<ServerConfig> {
    Arc::new(
        ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(leaf.chain.clone(), leaf.key_der())
            .unwrap(),
    )
}

fn rustls_error(e: &std::io::Error) -> Option<rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>().cloned()
}

/// What each side of one handshake saw.
struct Outcome {
    server: Result<Option<SpiffeId>, rustls::Error>,
    client: Result<Option<SpiffeId>, rustls::Error>,
}

async fn handshake(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_side = async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = TlsAcceptor::from(server)
            .accept(tcp)
            .await
            .map_err(|e| rustls_error(&e).unwrap_or(rustls::Error::General(e.to_string())))?;
        let peer = peer_spiffe_id(tls.get_ref().1.peer_certificates().unwrap_or_default());
        let mut buf = [0u8; 4];
        if tls.read_exact(&mut buf).await.is_ok() {
            let _ = tls.write_all(&buf).await;
            let _ = tls.flush().await;
        }
        Ok(peer)
    };
    let client_side = async move {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut tls = TlsConnector::from(client)
            .connect(ServerName::try_from("peer.invalid").unwrap(), tcp)
            .await
            .map_err(|e| rustls_error(&e).unwrap_or(rustls::Error::General(e.to_string())))?;
        let peer = peer_spiffe_id(tls.get_ref().1.peer_certificates().unwrap_or_default());
        // In TLS 1.3 the server judges the client certificate after the client finished: an
        // echo round trip tells whether the server accepted it.
        tls.write_all(b"ping")
            .await
            .map_err(|e| rustls_error(&e).unwrap_or(rustls::Error::General(e.to_string())))?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf)
            .await
            .map_err(|e| rustls_error(&e).unwrap_or(rustls::Error::General(e.to_string())))?;
        assert_eq!(&buf, b"ping");
        Ok(peer)
    };
    let (server, client) =
        tokio::time::timeout(TIMEOUT, async { tokio::join!(server_side, client_side) })
            .await
            .expect("handshake finished in time");
    Outcome { server, client }
}

/// outrider's server (store `store`) refuses a client presenting `leaf`; returns the label.
async fn refused_by_server(store: &CertStore, leaf: &Leaf) -> &'static str {
    let out = handshake(server_config(store), bad_client_config(Some(leaf))).await;
    assert!(out.client.is_err(), "the client should not get an echo");
    let err = out
        .server
        .expect_err("the server should refuse the client certificate");
    failure_reason(&err)
}

/// outrider's client (store `store`, expecting `allowed`) refuses a server presenting `leaf`.
async fn refused_by_client(store: &CertStore, allowed: Vec<SpiffeId>, leaf: &Leaf) -> &'static str {
    let out = handshake(bad_server_config(leaf), client_config(store, allowed)).await;
    let err = out
        .client
        .expect_err("the client should refuse the server certificate");
    failure_reason(&err)
}

/// Asserts both sides refuse `leaf` with `reason` (the store trusts `ca`).
async fn refused_both_ways_with(ca: &Ca, leaf: Leaf, reason: &str) {
    let store = store(ca, "name", &ca.pem());
    assert_eq!(
        refused_by_server(&store, &leaf).await,
        reason,
        "server side"
    );
    assert_eq!(
        refused_by_client(&store, vec![id("age")], &leaf).await,
        reason,
        "client side"
    );
}

fn hours(h: i64) -> time::Duration {
    time::Duration::hours(h)
}

// ---------------------------------------------------------------------------------------------
// The matrix

#[tokio::test]
async fn good_pair_handshakes_and_both_sides_see_each_other() {
    let ca = Ca::root(TD);
    let age = store(&ca, "age", &ca.pem());
    let name = store(&ca, "name", &ca.pem());
    let out = handshake(server_config(&age), client_config(&name, vec![id("age")])).await;
    assert_eq!(
        out.server.unwrap(),
        Some(id("name")),
        "server sees the client"
    );
    assert_eq!(
        out.client.unwrap(),
        Some(id("age")),
        "client sees the server"
    );
}

#[tokio::test]
async fn expired() {
    let ca = Ca::root(TD);
    let now = OffsetDateTime::now_utc();
    let leaf = ca.leaf(|p| {
        p.not_before = now - hours(3);
        p.not_after = now - hours(1);
    });
    refused_both_ways_with(&ca, leaf, "expired").await;
}

#[tokio::test]
async fn not_yet_valid() {
    let ca = Ca::root(TD);
    let now = OffsetDateTime::now_utc();
    let leaf = ca.leaf(|p| {
        p.not_before = now + hours(1);
        p.not_after = now + hours(3);
    });
    refused_both_ways_with(&ca, leaf, "not_yet_valid").await;
}

#[tokio::test]
async fn signed_by_another_ca() {
    // Same subject name as our root, different key: found by name, refused on the signature.
    let ca = Ca::root(TD);
    let other = Ca::root(TD);
    refused_both_ways_with(&ca, other.leaf(|_| {}), "unknown_issuer").await;
}

#[tokio::test]
async fn signed_by_another_ca_with_another_name() {
    let ca = Ca::root(TD);
    let other = Ca::root("elsewhere.example");
    refused_both_ways_with(&ca, other.leaf(|_| {}), "unknown_issuer").await;
}

#[tokio::test]
async fn self_signed_leaf() {
    let ca = Ca::root(TD);
    refused_both_ways_with(&ca, Leaf::self_signed(|_| {}), "unknown_issuer").await;
}

#[tokio::test]
async fn leaf_with_ca_true() {
    let ca = Ca::root(TD);
    let leaf = ca.leaf(|p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained));
    refused_both_ways_with(&ca, leaf, "ca_leaf").await;
}

#[tokio::test]
async fn leaf_with_key_cert_sign() {
    let ca = Ca::root(TD);
    let leaf = ca.leaf(|p| {
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
        ]
    });
    refused_both_ways_with(&ca, leaf, "leaf_signing_usage").await;
}

#[tokio::test]
async fn no_uri_san() {
    let ca = Ca::root(TD);
    let leaf = ca.leaf(|p| {
        p.subject_alt_names = vec![SanType::DnsName("age.default.svc".try_into().unwrap())]
    });
    refused_both_ways_with(&ca, leaf, "no_uri_san").await;
}

#[tokio::test]
async fn two_uri_sans() {
    let ca = Ca::root(TD);
    let leaf = ca.leaf(|p| {
        p.subject_alt_names = vec![uri(&id("age").to_string()), uri(&id("admin").to_string())]
    });
    refused_both_ways_with(&ca, leaf, "multiple_uri_sans").await;
}

#[tokio::test]
async fn uri_san_not_spiffe() {
    let ca = Ca::root(TD);
    let leaf =
        ca.leaf(|p| p.subject_alt_names = vec![uri("https://cluster.local/ns/default/sa/age")]);
    refused_both_ways_with(&ca, leaf, "not_spiffe").await;
}

#[tokio::test]
async fn wrong_trust_domain() {
    let ca = Ca::root(TD);
    let leaf =
        ca.leaf(|p| p.subject_alt_names = vec![uri("spiffe://evil.example/ns/default/sa/age")]);
    refused_both_ways_with(&ca, leaf, "untrusted_domain").await;
}

#[tokio::test]
async fn id_of_a_federated_domain_signed_by_our_root() {
    // Both domains are trusted, but a root may only vouch for IDs of its own trust domain.
    let ca = Ca::root(TD);
    let partner = Ca::root("partner.example");
    let roots = format!("{}{}", ca.pem(), partner.pem());
    let store = store(&ca, "name", &roots);
    let forged =
        ca.leaf(|p| p.subject_alt_names = vec![uri("spiffe://partner.example/ns/default/sa/age")]);
    assert_eq!(refused_by_server(&store, &forged).await, "untrusted_domain");
    // The partner's own SVID is accepted.
    let genuine = partner
        .leaf(|p| p.subject_alt_names = vec![uri("spiffe://partner.example/ns/default/sa/age")]);
    let out = handshake(server_config(&store), bad_client_config(Some(&genuine))).await;
    assert_eq!(
        out.server.unwrap(),
        Some(SpiffeId::parse("spiffe://partner.example/ns/default/sa/age").unwrap())
    );
}

#[tokio::test]
async fn malformed_id_upper_case_trust_domain() {
    let ca = Ca::root(TD);
    let leaf =
        ca.leaf(|p| p.subject_alt_names = vec![uri("spiffe://Cluster.local/ns/default/sa/age")]);
    refused_both_ways_with(&ca, leaf, "bad_spiffe_id").await;
}

#[tokio::test]
async fn malformed_id_dot_dot_segment() {
    let ca = Ca::root(TD);
    let leaf = ca.leaf(|p| p.subject_alt_names = vec![uri("spiffe://cluster.local/ns/../sa/age")]);
    refused_both_ways_with(&ca, leaf, "bad_spiffe_id").await;
}

#[tokio::test]
async fn malformed_id_empty_segment() {
    let ca = Ca::root(TD);
    let leaf = ca.leaf(|p| p.subject_alt_names = vec![uri("spiffe://cluster.local/ns//sa/age")]);
    refused_both_ways_with(&ca, leaf, "bad_spiffe_id").await;
}

#[tokio::test]
async fn malformed_id_query_string() {
    let ca = Ca::root(TD);
    let leaf = ca
        .leaf(|p| p.subject_alt_names = vec![uri("spiffe://cluster.local/ns/default/sa/age?x=1")]);
    refused_both_ways_with(&ca, leaf, "bad_spiffe_id").await;
}

#[tokio::test]
async fn trust_domain_id_as_workload_id() {
    let ca = Ca::root(TD);
    let leaf = ca.leaf(|p| p.subject_alt_names = vec![uri("spiffe://cluster.local")]);
    refused_both_ways_with(&ca, leaf, "bad_spiffe_id").await;
}

#[tokio::test]
async fn client_cert_with_server_auth_eku_only() {
    let ca = Ca::root(TD);
    let leaf = ca.leaf(|p| p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth]);
    let store = store(&ca, "name", &ca.pem());
    assert_eq!(refused_by_server(&store, &leaf).await, "bad_eku");
}

#[tokio::test]
async fn server_cert_with_client_auth_eku_only() {
    let ca = Ca::root(TD);
    let leaf = ca.leaf(|p| p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth]);
    let store = store(&ca, "name", &ca.pem());
    assert_eq!(
        refused_by_client(&store, vec![id("age")], &leaf).await,
        "bad_eku"
    );
}

#[tokio::test]
async fn valid_cert_of_the_wrong_service_account() {
    let ca = Ca::root(TD);
    let impostor = ca.leaf(|p| p.subject_alt_names = vec![uri(&id("name").to_string())]);
    let store = store(&ca, "client", &ca.pem());
    assert_eq!(
        refused_by_client(&store, vec![id("age"), id("age-canary")], &impostor).await,
        "identity_mismatch"
    );
}

#[tokio::test]
async fn no_client_cert() {
    let ca = Ca::root(TD);
    let store = store(&ca, "name", &ca.pem());
    let out = handshake(server_config(&store), bad_client_config(None)).await;
    assert_eq!(failure_reason(&out.server.unwrap_err()), "no_client_cert");
}

#[tokio::test]
async fn empty_store_refuses_everything() {
    let ca = Ca::root(TD);
    let empty = CertStore::new(TD);
    let out = handshake(
        server_config(&empty),
        bad_client_config(Some(&ca.leaf(|_| {}))),
    )
    .await;
    assert!(out.server.is_err() && out.client.is_err());
    let good = ca.leaf(|_| {});
    let err = handshake(
        bad_server_config(&good),
        client_config(&empty, vec![id("age")]),
    )
    .await
    .client
    .unwrap_err();
    assert_eq!(failure_reason(&err), "no_identity");
}

#[tokio::test]
async fn chain_through_an_intermediate_is_accepted() {
    let root = Ca::root(TD);
    let intermediate = root.intermediate(TD);
    // Both sides hold SVIDs issued by the intermediate and trust only the root.
    let age = store(&intermediate, "age", &root.pem());
    let name = store(&intermediate, "name", &root.pem());
    assert_eq!(age.current().unwrap().svid.chain().len(), 2);
    let out = handshake(server_config(&age), client_config(&name, vec![id("age")])).await;
    assert_eq!(out.server.unwrap(), Some(id("name")));
    assert_eq!(out.client.unwrap(), Some(id("age")));
}

/// A clock running `ahead` of the wall clock.
#[derive(Debug)]
struct Ahead(Duration);

impl rustls::time_provider::TimeProvider for Ahead {
    fn current_time(&self) -> Option<UnixTime> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?;
        Some(UnixTime::since_unix_epoch(now + self.0))
    }
}

#[tokio::test]
async fn injected_clock_sees_a_good_certificate_expire() {
    let ca = Ca::root(TD);
    let store = store(&ca, "name", &ca.pem());
    let leaf = ca.leaf(|_| {});
    let later =
        outrider::tls::server_config_with_time(&store, Arc::new(Ahead(Duration::from_secs(7200))));
    let out = handshake(later, bad_client_config(Some(&leaf))).await;
    assert_eq!(failure_reason(&out.server.unwrap_err()), "expired");
    let now = handshake(server_config(&store), bad_client_config(Some(&leaf))).await;
    assert_eq!(now.server.unwrap(), Some(id("age")));
}
