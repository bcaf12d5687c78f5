//! One edge server's rustls configuration, from its TLS settings and material: the served
//! certificate loaded without webpki (X.509 v1 accepted), client certificates verified by
//! [`EdgeClientVerifier`] for MUTUAL and OPTIONAL_MUTUAL, the protocol versions and TLS 1.2
//! cipher suites the Gateway allows, ALPN for HTTP servers, and session resumption whose
//! keys and cache belong to this one configuration.

use std::sync::Arc;

use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::{ServerConfig, SupportedProtocolVersion};
use rustls_pki_types::CertificateDer;

use super::source::Material;
use super::CertProblem;
use crate::config::{CaSource, CertificateSource, GatewayServer, ServerTlsMode, TlsVersion};
use crate::tls::edge::{
    certified_key, edge_provider, parse_certificates, EdgeClientVerifier, EdgeTlsError,
    SniCertificates,
};

/// TLS 1.2 sessions remembered per server configuration (clients without ticket support).
pub const SESSION_CACHE_SIZE: usize = 1024;

/// ALPN of HTTP servers: HTTP/2 preferred, as Envoy's HTTPS listeners.
pub const HTTP_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// What one terminating server's configuration depends on besides the bytes of its files.
/// Two servers with equal settings can share material (see `EdgeCertificates::update`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Settings {
    pub mode: ServerTlsMode,
    pub certificate: CertificateSource,
    /// `None` for SIMPLE (its CA is not used even when the credential has one).
    pub ca: Option<CaSource>,
    pub subject_alt_names: Vec<String>,
    pub min: TlsVersion,
    pub max: TlsVersion,
    pub cipher_suites: Vec<String>,
    /// ALPN `h2` and `http/1.1` (HTTP-class servers); none for TLS and TCP servers.
    pub http: bool,
}

impl Settings {
    /// The settings of a server that terminates TLS with its own certificate; `None` for
    /// plaintext, PASSTHROUGH and ISTIO_MUTUAL servers.
    pub fn of(server: &GatewayServer) -> Result<Option<Settings>, CertProblem> {
        let Some(tls) = &server.tls else {
            return Ok(None);
        };
        let verifies_clients = match tls.mode {
            ServerTlsMode::Simple => false,
            ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual => true,
            ServerTlsMode::Passthrough | ServerTlsMode::IstioMutual => return Ok(None),
        };
        let certificate = tls
            .certificate
            .clone()
            .ok_or(CertProblem::MissingCertificate { mode: tls.mode })?;
        // `credentialName` names the client CA too (its `-cacert` directory or itself),
        // whether or not the plan spelled that out.
        let ca = match (&tls.ca_certificates, &certificate) {
            _ if !verifies_clients => None,
            (Some(ca), _) => Some(ca.clone()),
            (None, CertificateSource::Credential { name }) => {
                Some(CaSource::Credential { name: name.clone() })
            }
            (None, CertificateSource::Files { .. }) => None,
        };
        Ok(Some(Settings {
            mode: tls.mode,
            certificate,
            ca,
            subject_alt_names: if verifies_clients {
                tls.subject_alt_names.clone()
            } else {
                Vec::new()
            },
            min: tls.min_protocol_version,
            max: tls.max_protocol_version,
            cipher_suites: tls.cipher_suites.clone(),
            http: server.protocol.is_http(),
        }))
    }

    pub fn verifies_clients(&self) -> bool {
        matches!(
            self.mode,
            ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual
        )
    }
}

/// A built configuration and the certificates it serves and trusts (for `/certs`).
pub(super) struct Built {
    pub config: Arc<ServerConfig>,
    /// The served chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The client CA certificates (empty for SIMPLE).
    pub ca: Vec<CertificateDer<'static>>,
    /// The leaf's notAfter, Unix seconds.
    pub not_after: i64,
}

/// Builds the configuration of `settings` from `material`. Each call makes a new session
/// ticket key and session cache: a session resumes only on the configuration that verified
/// its client, so a client certificate accepted under a CA that has since been replaced
/// cannot resume past the change.
pub(super) fn build(settings: &Settings, material: &Material) -> Result<Built, CertProblem> {
    let cert_file = &material.certificate.path;
    let key_file = &material.private_key.path;
    let key = certified_key(&material.certificate.bytes, &material.private_key.bytes).map_err(
        |source| match source {
            EdgeTlsError::KeyMismatch => CertProblem::KeyMismatch {
                certificate: cert_file.clone(),
                private_key: key_file.clone(),
            },
            EdgeTlsError::UnsupportedKey(_)
            | EdgeTlsError::Pem {
                role: "private key",
                ..
            } => CertProblem::Material {
                file: key_file.clone(),
                source: Box::new(source),
            },
            source => CertProblem::Material {
                file: cert_file.clone(),
                source: Box::new(source),
            },
        },
    )?;
    let not_after = x509_parser::parse_x509_certificate(key.cert[0].as_ref())
        .map(|(_, leaf)| leaf.validity().not_after.timestamp())
        .map_err(|e| CertProblem::Material {
            file: cert_file.clone(),
            source: Box::new(EdgeTlsError::BadCertificate {
                role: "server certificate",
                reason: e.to_string(),
            }),
        })?;

    let versions = protocol_versions(settings.min, settings.max)?;
    let (provider, unusable) = edge_provider(&settings.cipher_suites)
        .map_err(|e| CertProblem::CipherSuites(Box::new(e)))?;
    if !unusable.is_empty() {
        tracing::warn!(
            ignored = ?unusable,
            "cipherSuites names suites rustls does not implement (only ECDHE with AES-GCM or \
             ChaCha20-Poly1305); they are ignored"
        );
    }

    let (verifier, ca): (Arc<dyn ClientCertVerifier>, _) = match &material.ca {
        Some(ca) if settings.verifies_clients() => {
            let bad_ca = |source| CertProblem::Material {
                file: ca.path.clone(),
                source: Box::new(source),
            };
            let verifier = EdgeClientVerifier::new(
                &ca.bytes,
                settings.subject_alt_names.clone(),
                settings.mode == ServerTlsMode::Mutual,
            )
            .map_err(bad_ca)?;
            let certs = parse_certificates(&ca.bytes, "CA certificates").map_err(bad_ca)?;
            (Arc::new(verifier), certs)
        }
        None if settings.verifies_clients() => {
            return Err(CertProblem::MissingCa {
                mode: settings.mode,
            })
        }
        _ => (WebPkiClientVerifier::no_client_auth(), Vec::new()),
    };

    let mut sni = SniCertificates::new();
    sni.set_default(key.clone());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(CertProblem::Rustls)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(sni));
    config.alpn_protocols = if settings.http {
        HTTP_ALPN.iter().map(|p| p.to_vec()).collect()
    } else {
        Vec::new()
    };
    // A configured cipher list is an order of preference, as Envoy applies it.
    config.ignore_client_order = !settings.cipher_suites.is_empty();
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
    match rustls::crypto::aws_lc_rs::Ticketer::new() {
        Ok(ticketer) => config.ticketer = ticketer,
        Err(e) => {
            tracing::warn!(error = %e, "no session ticket key; edge clients will not resume by ticket")
        }
    }
    Ok(Built {
        config: Arc::new(config),
        chain: key.cert.clone(),
        ca,
        not_after,
    })
}

/// The rustls versions from `minProtocolVersion` to `maxProtocolVersion`.
fn protocol_versions(
    min: TlsVersion,
    max: TlsVersion,
) -> Result<Vec<&'static SupportedProtocolVersion>, CertProblem> {
    let versions: Vec<_> = [
        (TlsVersion::Tls13, &rustls::version::TLS13),
        (TlsVersion::Tls12, &rustls::version::TLS12),
    ]
    .into_iter()
    .filter(|(v, _)| min <= *v && *v <= max)
    .map(|(_, version)| version)
    .collect();
    if versions.is_empty() {
        return Err(CertProblem::VersionRange { min, max });
    }
    Ok(versions)
}
