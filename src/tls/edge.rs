//! TLS material and client-certificate verification for the edge (the ingress gateway's
//! SIMPLE / MUTUAL / OPTIONAL_MUTUAL servers, SEMANTICS.md §6), where the certificates are the
//! user's own, made with `openssl`, not mesh SVIDs.
//!
//! OpenSSL 3's `openssl x509 -req` without an extension file (the labs' commands) makes
//! **X.509 v1** certificates: no extensions, no subjectAltName. rustls' verifier (webpki) and
//! its key-consistency check refuse v1 outright, while curl accepts such a server certificate
//! by its subject CN and Envoy accepts such a client certificate. So this module:
//!
//! - loads a server certificate chain and key without the webpki parse ([`certified_key`]),
//!   checking itself that the key belongs to the certificate (SubjectPublicKeyInfo
//!   comparison), and resolves it by SNI ([`SniCertificates`]);
//! - verifies client certificates with its own small path validation
//!   ([`EdgeClientVerifier`], rules in its documentation), signatures checked by aws-lc-rs.
//!
//! Besides, what a Gateway server's TLS settings need from rustls: its `cipherSuites` mapped to
//! the provider's TLS 1.2 suites ([`tls12_cipher_suite`], [`edge_provider`]), and the reason a
//! server handshake failed named as the TLS alert ([`handshake_outcome`]). The configurations
//! themselves are built and reloaded by `crate::gateway::certs`.
//!
//! **Never use this verifier for mesh identities**: mesh peers stay strict SPIFFE SVIDs,
//! verified by webpki in [`crate::tls::verifier`]. The rules here are only as strict as the
//! edge needs to accept what Envoy accepts from the labs' certificates.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::time_provider::TimeProvider;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, PeerMisbehaved,
    SignatureScheme, SupportedCipherSuite,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, SubjectPublicKeyInfoDer, UnixTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::identity::svid::PROVIDER;

/// The longest certificate chain accepted from a client: the leaf, up to three presented
/// intermediates and a configured CA certificate.
pub const MAX_CHAIN_DEPTH: usize = 5;

/// Loading edge TLS material, and why an edge client certificate was refused.
#[derive(Debug, thiserror::Error)]
pub enum EdgeTlsError {
    /// A PEM input (named by its role) could not be read.
    #[error("{role}: not valid PEM: {reason}")]
    Pem { role: &'static str, reason: String },
    /// A PEM input (named by its role) holds no certificate.
    #[error("{role}: no certificate in the PEM")]
    NoCertificate { role: &'static str },
    /// A certificate could not be parsed as X.509.
    #[error("{role}: not an X.509 certificate: {reason}")]
    BadCertificate { role: &'static str, reason: String },
    /// The private key is of a type or size the aws-lc-rs provider cannot sign with.
    #[error("private key: unsupported or invalid: {0}")]
    UnsupportedKey(String),
    /// The private key does not belong to the certificate.
    #[error(
        "private key does not match the server certificate (the public key of the certificate \
         chain's first certificate differs from the private key's)"
    )]
    KeyMismatch,
    /// No chain of the client certificate reaches a configured CA certificate.
    #[error("client certificate {subject:?}: no chain to a configured CA (issuer {issuer:?})")]
    UnknownIssuer { subject: String, issuer: String },
    /// A certificate of the chain is past its notAfter.
    #[error("certificate {subject:?} expired at {not_after} (now {now})")]
    Expired {
        subject: String,
        not_after: i64,
        now: i64,
    },
    /// A certificate of the chain is before its notBefore.
    #[error("certificate {subject:?} not valid before {not_before} (now {now})")]
    NotYetValid {
        subject: String,
        not_before: i64,
        now: i64,
    },
    /// The client certificate's extended key usage excludes client authentication.
    #[error("client certificate {subject:?}: extended key usage excludes clientAuth")]
    NotForClientAuth { subject: String },
    /// `subjectAltNames` is configured and the client certificate carries none of them.
    #[error("client certificate {subject:?}: SANs {presented:?} include none of {allowed:?}")]
    SanNotAllowed {
        subject: String,
        presented: Vec<String>,
        allowed: Vec<String>,
    },
    /// `cipherSuites` names no TLS 1.2 suite rustls implements.
    #[error(
        "cipherSuites {configured:?}: none is supported (supported TLS 1.2 suites: {supported:?})"
    )]
    NoCipherSuite {
        configured: Vec<String>,
        supported: Vec<String>,
    },
}

impl From<EdgeTlsError> for rustls::Error {
    /// Chooses the rustls error whose alert a client expects: `unknown_ca`,
    /// `certificate_expired`, `bad_certificate`, `unsupported_certificate`.
    fn from(err: EdgeTlsError) -> Self {
        let secs =
            |t: i64| UnixTime::since_unix_epoch(std::time::Duration::from_secs(t.max(0) as u64));
        let ce = match err {
            EdgeTlsError::UnknownIssuer { .. } => CertificateError::UnknownIssuer,
            EdgeTlsError::Expired { not_after, now, .. } => CertificateError::ExpiredContext {
                time: secs(now),
                not_after: secs(not_after),
            },
            EdgeTlsError::NotYetValid {
                not_before, now, ..
            } => CertificateError::NotValidYetContext {
                time: secs(now),
                not_before: secs(not_before),
            },
            EdgeTlsError::NotForClientAuth { .. } => CertificateError::InvalidPurpose,
            EdgeTlsError::SanNotAllowed { .. } => CertificateError::NotValidForName,
            EdgeTlsError::BadCertificate { .. } => CertificateError::BadEncoding,
            other => CertificateError::Other(OtherError(Arc::new(other))),
        };
        rustls::Error::InvalidCertificate(ce)
    }
}

/// Loads a server certificate chain (leaf first) and its private key from PEM, for serving.
///
/// v1 certificates are accepted: the chain is not parsed by webpki. Instead the key is checked
/// against the leaf's SubjectPublicKeyInfo (parsed by x509-parser). Keys: whatever the aws-lc-rs
/// provider signs with (RSA 2048+, ECDSA P-256/P-384, Ed25519), in PKCS#1, SEC1 or PKCS#8 PEM.
pub fn certified_key(
    cert_chain_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<CertifiedKey>, EdgeTlsError> {
    const ROLE: &str = "server certificate";
    let chain = parse_certificates(cert_chain_pem, ROLE)?;
    let leaf = parse_x509(&chain[0], ROLE)?;
    let cert_spki = leaf.public_key().raw.to_vec();
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| EdgeTlsError::Pem {
        role: "private key",
        reason: e.to_string(),
    })?;
    let key = PROVIDER
        .key_provider
        .load_private_key(key)
        .map_err(|e| EdgeTlsError::UnsupportedKey(e.to_string()))?;
    // aws-lc-rs keys always know their public key; a key that does not is not one we loaded.
    let key_spki = key
        .public_key()
        .ok_or_else(|| EdgeTlsError::UnsupportedKey("public key unknown".into()))?;
    if key_spki.as_ref() != cert_spki.as_slice() {
        return Err(EdgeTlsError::KeyMismatch);
    }
    Ok(Arc::new(CertifiedKey::new(chain, key)))
}

/// Parses every certificate of a PEM bundle; at least one is required.
pub fn parse_certificates(
    pem: &[u8],
    role: &'static str,
) -> Result<Vec<CertificateDer<'static>>, EdgeTlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| EdgeTlsError::Pem {
            role,
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(EdgeTlsError::NoCertificate { role });
    }
    for cert in &certs {
        parse_x509(cert, role)?;
    }
    Ok(certs)
}

/// Server certificates chosen by the SNI of the ClientHello.
///
/// A name is looked up exactly (case-insensitively), then against `*.` wildcards from the most
/// specific suffix to the least (`a.b.example.com` tries `*.b.example.com`, then
/// `*.example.com`), as Envoy matches `server_names`; a wildcard never matches the bare domain.
/// No match, or no SNI: the default, if set; otherwise the handshake is refused.
#[derive(Debug, Default, Clone)]
pub struct SniCertificates {
    by_name: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl SniCertificates {
    /// An empty resolver (refuses every handshake until something is inserted).
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `key` for `host_pattern`: an exact host or `*.<domain>`.
    pub fn insert(&mut self, host_pattern: &str, key: Arc<CertifiedKey>) {
        self.by_name.insert(host_pattern.to_ascii_lowercase(), key);
    }

    /// Serves `key` when nothing else matches (or the client sent no SNI).
    pub fn set_default(&mut self, key: Arc<CertifiedKey>) {
        self.default = Some(key);
    }

    /// The certificate for a server name (`None`: no SNI).
    pub fn lookup(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let found = server_name.and_then(|name| {
            let name = name.to_ascii_lowercase();
            if let Some(key) = self.by_name.get(&name) {
                return Some(key.clone());
            }
            let mut rest = name.as_str();
            while let Some((_, parent)) = rest.split_once('.') {
                if parent.is_empty() {
                    break;
                }
                if let Some(key) = self.by_name.get(&format!("*.{parent}")) {
                    return Some(key.clone());
                }
                rest = parent;
            }
            None
        });
        found.or_else(|| self.default.clone())
    }
}

impl ResolvesServerCert for SniCertificates {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.lookup(client_hello.server_name())
    }
}

/// Verifies client certificates at the edge (Gateway `MUTUAL` and `OPTIONAL_MUTUAL`) against
/// the Gateway's `caCertificates`, accepting the labs' X.509 v1 certificates.
///
/// The rustls trait lives in a module named `danger` because a custom verifier can accept
/// anything; this one does verify. A client certificate is accepted only when:
///
/// 1. it chains to one of the configured CA certificates: each certificate's issuer name equals
///    (byte for byte) the subject of its issuer, and its signature verifies (aws-lc-rs) with the
///    issuer's public key. Intermediates the client presents may be used. A chain whose
///    signatures fail is refused as an unknown issuer (`unknown_ca`): a certificate from another
///    CA with the same name is, to us, a certificate from an unknown CA;
/// 2. every issuer is a CA: a v3 certificate with basicConstraints `CA:TRUE` (its pathLen and
///    keyUsage `keyCertSign`, when present, respected). A v1 certificate may be an issuer only
///    if it is itself one of the configured CA certificates;
/// 3. every certificate of the chain, the configured CA included, is within its validity
///    period at the verifier's clock, and the chain has at most [`MAX_CHAIN_DEPTH`]
///    certificates;
/// 4. the leaf (v1 or v3) has no extended key usage, or one allowing clientAuth;
/// 5. when `subjectAltNames` is non-empty, the leaf carries one of them exactly as a DNS or URI
///    SAN (a v1 leaf has no SANs, so it is refused then).
///
/// Refusals map to the alerts clients expect: `unknown_ca`, `certificate_expired` (also for
/// not yet valid), `unsupported_certificate` (EKU), `bad_certificate` (SAN). Under `MUTUAL`
/// (`mandatory`) a client without a certificate gets `certificate_required` (TLS 1.3). The
/// handshake signature (CertificateVerify) is checked against the leaf's SubjectPublicKeyInfo
/// without webpki's certificate parse (which refuses v1); a bad one yields `decrypt_error`.
pub struct EdgeClientVerifier {
    cas: Vec<CertificateDer<'static>>,
    subjects: Vec<DistinguishedName>,
    subject_alt_names: Vec<String>,
    mandatory: bool,
    time: Option<Arc<dyn TimeProvider>>,
}

impl EdgeClientVerifier {
    /// A verifier trusting the certificates of `ca_pem` (the Gateway's `caCertificates`).
    /// `subject_alt_names` empty: any SAN (or none). `mandatory`: `MUTUAL` true,
    /// `OPTIONAL_MUTUAL` false.
    pub fn new(
        ca_pem: &[u8],
        subject_alt_names: Vec<String>,
        mandatory: bool,
    ) -> Result<Self, EdgeTlsError> {
        const ROLE: &str = "CA certificates";
        let cas = parse_certificates(ca_pem, ROLE)?;
        let subjects = cas
            .iter()
            .map(|der| {
                parse_x509(der, ROLE)
                    .map(|c| DistinguishedName::from(c.subject().as_raw().to_vec()))
            })
            .collect::<Result<_, _>>()?;
        Ok(EdgeClientVerifier {
            cas,
            subjects,
            subject_alt_names,
            mandatory,
            time: None,
        })
    }

    /// Judges validity periods at `time` instead of the time rustls passes (from the server
    /// configuration's clock).
    pub fn with_time(mut self, time: Arc<dyn TimeProvider>) -> Self {
        self.time = Some(time);
        self
    }

    /// Verifies a client chain at `now` by the rules of [`EdgeClientVerifier`].
    pub fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), EdgeTlsError> {
        let now = now.as_secs() as i64;
        let leaf = parse_x509(end_entity, "client certificate")?;
        check_validity(&leaf, now)?;
        let presented = intermediates
            .iter()
            .map(|der| parse_x509(der, "client intermediate certificate"))
            .collect::<Result<Vec<_>, _>>()?;
        let anchors = self
            .cas
            .iter()
            .map(|der| parse_x509(der, "CA certificates"))
            .collect::<Result<Vec<_>, _>>()?;
        let chain = Chain {
            presented: &presented,
            anchors: &anchors,
            now,
        };
        chain.find_path(&leaf, 1, 0)?;
        check_client_purpose(&leaf)?;
        self.check_san(&leaf)
    }

    fn check_san(&self, leaf: &X509Certificate<'_>) -> Result<(), EdgeTlsError> {
        if self.subject_alt_names.is_empty() {
            return Ok(());
        }
        let presented: Vec<String> = match leaf.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::DNSName(dns) => Some(dns.to_string()),
                    GeneralName::URI(uri) => Some(uri.to_string()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        if presented.iter().any(|p| {
            self.subject_alt_names
                .iter()
                .any(|allowed| allowed == p || (is_dns(allowed) && allowed.eq_ignore_ascii_case(p)))
        }) {
            return Ok(());
        }
        Err(EdgeTlsError::SanNotAllowed {
            subject: leaf.subject().to_string(),
            presented,
            allowed: self.subject_alt_names.clone(),
        })
    }
}

impl fmt::Debug for EdgeClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EdgeClientVerifier")
            .field("ca_certificates", &self.cas.len())
            .field("subject_alt_names", &self.subject_alt_names)
            .field("mandatory", &self.mandatory)
            .finish()
    }
}

impl ClientCertVerifier for EdgeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.subjects
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let now = match &self.time {
            Some(time) => time.current_time().unwrap_or(now),
            None => now,
        };
        self.verify(end_entity, intermediates, now)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let spki = leaf_spki(cert)?;
        rustls::crypto::verify_tls13_signature_with_raw_key(
            message,
            &spki,
            dss,
            &PROVIDER.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        PROVIDER
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The TLS 1.2 cipher suite of the aws-lc-rs provider named `name`, as a Gateway's
/// `cipherSuites` writes it: the OpenSSL name (`ECDHE-RSA-AES128-GCM-SHA256`, what Envoy and
/// Istio document) or the IANA one (`TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`). `None` for
/// anything else, including real suites rustls does not implement (CBC, RSA key exchange):
/// rustls offers only ECDHE with AEAD ciphers.
pub fn tls12_cipher_suite(name: &str) -> Option<SupportedCipherSuite> {
    let name = name.trim();
    TLS12_SUITES
        .iter()
        .find(|(openssl, iana, _)| {
            openssl.eq_ignore_ascii_case(name) || iana.eq_ignore_ascii_case(name)
        })
        .map(|(_, _, suite)| *suite)
}

/// The TLS 1.2 suites of the aws-lc-rs provider: OpenSSL name, IANA name, suite.
const TLS12_SUITES: &[(&str, &str, SupportedCipherSuite)] = {
    use rustls::crypto::aws_lc_rs::cipher_suite as cs;
    &[
        (
            "ECDHE-ECDSA-AES128-GCM-SHA256",
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ),
        (
            "ECDHE-ECDSA-AES256-GCM-SHA384",
            "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        ),
        (
            "ECDHE-ECDSA-CHACHA20-POLY1305",
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
        (
            "ECDHE-RSA-AES128-GCM-SHA256",
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        ),
        (
            "ECDHE-RSA-AES256-GCM-SHA384",
            "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
            cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        ),
        (
            "ECDHE-RSA-CHACHA20-POLY1305",
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
    ]
};

/// The crypto provider of one edge server: aws-lc-rs with every TLS 1.3 suite (as Envoy: a
/// Gateway's `cipherSuites` only selects among TLS 1.2 ones) followed by the TLS 1.2 suites
/// `cipher_suites` names, in its order (empty: all of them).
///
/// Envoy's equal-preference groups (`[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-ECDSA-CHACHA20-POLY1305]`)
/// are read as their members in order. Returns the provider and the names that are not
/// a suite rustls implements (the caller warns about them); a non-empty `cipher_suites`
/// naming no usable suite at all is an error listing the ones that are.
pub fn edge_provider(
    cipher_suites: &[String],
) -> Result<(Arc<CryptoProvider>, Vec<String>), EdgeTlsError> {
    let mut provider = (**PROVIDER).clone();
    if cipher_suites.is_empty() {
        return Ok((Arc::new(provider), Vec::new()));
    }
    let mut tls12 = Vec::new();
    let mut unusable = Vec::new();
    let names = cipher_suites
        .iter()
        .flat_map(|n| n.trim_matches(|c| c == '[' || c == ']').split('|'))
        .map(str::trim)
        .filter(|n| !n.is_empty());
    for name in names {
        match tls12_cipher_suite(name) {
            Some(suite) => {
                if !tls12
                    .iter()
                    .any(|s: &SupportedCipherSuite| s.suite() == suite.suite())
                {
                    tls12.push(suite);
                }
            }
            None => unusable.push(name.to_string()),
        }
    }
    if tls12.is_empty() {
        return Err(EdgeTlsError::NoCipherSuite {
            configured: cipher_suites.to_vec(),
            supported: TLS12_SUITES
                .iter()
                .map(|(openssl, _, _)| openssl.to_string())
                .collect(),
        });
    }
    provider.cipher_suites.retain(|s| s.tls13().is_some());
    provider.cipher_suites.extend(tls12);
    Ok((Arc::new(provider), unusable))
}

/// The reason a server-side edge handshake failed, as the gateway's
/// `outrider_gateway_tls_handshakes_total{outcome}` counts it: the name of the TLS alert
/// involved. `certificate_required` (MUTUAL, no client certificate), `unknown_ca`,
/// `certificate_expired` (also not yet valid), `bad_certificate` (any other refusal of the
/// client certificate or of its handshake signature), `protocol_version`, `no_shared_cipher`,
/// else `other`. An alert the client sent (for instance `unknown_ca` when it does not trust
/// the served certificate) counts under the same names: the operator's question is the same,
/// which side's CA does not fit. Errors that are not TLS (I/O, timeouts) are `other`; the
/// caller tells timeouts and non-TLS clients apart itself.
pub fn handshake_outcome(err: &std::io::Error) -> &'static str {
    match err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(err) => rustls_outcome(err),
        None => "other",
    }
}

/// [`handshake_outcome`] of a rustls error.
pub fn rustls_outcome(err: &rustls::Error) -> &'static str {
    use rustls::{AlertDescription as Alert, PeerIncompatible as Incompatible};
    match err {
        rustls::Error::NoCertificatesPresented => "certificate_required",
        rustls::Error::InvalidCertificate(ce) => match ce {
            CertificateError::UnknownIssuer => "unknown_ca",
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => "certificate_expired",
            _ => "bad_certificate",
        },
        rustls::Error::PeerIncompatible(p) => match p {
            Incompatible::Tls12NotOffered
            | Incompatible::Tls12NotOfferedOrEnabled
            | Incompatible::SupportedVersionsExtensionRequired
            | Incompatible::ServerDoesNotSupportTls12Or13 => "protocol_version",
            Incompatible::NoCipherSuitesInCommon => "no_shared_cipher",
            _ => "other",
        },
        rustls::Error::AlertReceived(alert) => match alert {
            Alert::CertificateRequired => "certificate_required",
            Alert::UnknownCA => "unknown_ca",
            Alert::CertificateExpired => "certificate_expired",
            Alert::BadCertificate | Alert::UnsupportedCertificate | Alert::CertificateUnknown => {
                "bad_certificate"
            }
            Alert::ProtocolVersion => "protocol_version",
            _ => "other",
        },
        _ => "other",
    }
}

/// The material a path is built from: parsed once per handshake.
struct Chain<'c, 'a> {
    presented: &'c [X509Certificate<'a>],
    anchors: &'c [X509Certificate<'a>],
    now: i64,
}

impl Chain<'_, '_> {
    /// Finds an issuer path from `cert` (at position `depth`, the leaf being 1, with `cas_below`
    /// CA certificates between it and the leaf) to a configured CA certificate.
    fn find_path(
        &self,
        cert: &X509Certificate<'_>,
        depth: usize,
        cas_below: u32,
    ) -> Result<(), EdgeTlsError> {
        let unknown = || EdgeTlsError::UnknownIssuer {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
        };
        if depth >= MAX_CHAIN_DEPTH {
            return Err(unknown());
        }
        let issued_by = |issuer: &X509Certificate<'_>| {
            issuer.subject().as_raw() == cert.issuer().as_raw()
                && cert.verify_signature(Some(issuer.public_key())).is_ok()
        };
        for anchor in self.anchors {
            let v1 = anchor.version().0 == 0;
            if (v1 || may_issue(anchor, cas_below)) && issued_by(anchor) {
                return check_validity(anchor, self.now);
            }
        }
        let mut last = unknown();
        for issuer in self.presented {
            if !may_issue(issuer, cas_below) || !issued_by(issuer) {
                continue;
            }
            match check_validity(issuer, self.now)
                .and_then(|()| self.find_path(issuer, depth + 1, cas_below + 1))
            {
                Ok(()) => return Ok(()),
                Err(err) => last = err,
            }
        }
        Err(last)
    }
}

/// Whether a v3 certificate is a CA allowed to issue a certificate with `cas_below` CA
/// certificates under it (basicConstraints CA:TRUE, pathLen, keyUsage keyCertSign).
fn may_issue(cert: &X509Certificate<'_>, cas_below: u32) -> bool {
    let Ok(Some(bc)) = cert.basic_constraints() else {
        return false;
    };
    if !bc.value.ca || bc.value.path_len_constraint.is_some_and(|n| cas_below > n) {
        return false;
    }
    match cert.key_usage() {
        Ok(Some(ku)) => ku.value.key_cert_sign(),
        Ok(None) => true,
        Err(_) => false,
    }
}

fn check_validity(cert: &X509Certificate<'_>, now: i64) -> Result<(), EdgeTlsError> {
    let validity = cert.validity();
    if now < validity.not_before.timestamp() {
        return Err(EdgeTlsError::NotYetValid {
            subject: cert.subject().to_string(),
            not_before: validity.not_before.timestamp(),
            now,
        });
    }
    if now > validity.not_after.timestamp() {
        return Err(EdgeTlsError::Expired {
            subject: cert.subject().to_string(),
            not_after: validity.not_after.timestamp(),
            now,
        });
    }
    Ok(())
}

fn check_client_purpose(leaf: &X509Certificate<'_>) -> Result<(), EdgeTlsError> {
    match leaf.extended_key_usage() {
        Ok(Some(eku)) if !(eku.value.any || eku.value.client_auth) => {
            Err(EdgeTlsError::NotForClientAuth {
                subject: leaf.subject().to_string(),
            })
        }
        _ => Ok(()),
    }
}

fn is_dns(name: &str) -> bool {
    !name.contains(':')
}

fn parse_x509<'a>(
    der: &'a CertificateDer<'_>,
    role: &'static str,
) -> Result<X509Certificate<'a>, EdgeTlsError> {
    match x509_parser::parse_x509_certificate(der.as_ref()) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(EdgeTlsError::BadCertificate {
            role,
            reason: "trailing data".into(),
        }),
        Err(e) => Err(EdgeTlsError::BadCertificate {
            role,
            reason: e.to_string(),
        }),
    }
}

/// The leaf's SubjectPublicKeyInfo, read by x509-parser (v1 included).
fn leaf_spki(cert: &CertificateDer<'_>) -> Result<SubjectPublicKeyInfoDer<'static>, rustls::Error> {
    let leaf = parse_x509(cert, "client certificate")?;
    Ok(SubjectPublicKeyInfoDer::from(
        leaf.public_key().raw.to_vec(),
    ))
}

/// TLS 1.2 CertificateVerify: every algorithm the provider maps the scheme to is tried until
/// one fits the key type (as rustls does), on the raw SubjectPublicKeyInfo.
fn verify_tls12_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    verify_tls12_scheme(message, cert, dss.scheme, dss.signature())
}

fn verify_tls12_scheme(
    message: &[u8],
    cert: &CertificateDer<'_>,
    scheme: SignatureScheme,
    signature: &[u8],
) -> Result<HandshakeSignatureValid, rustls::Error> {
    let candidates = PROVIDER
        .signature_verification_algorithms
        .mapping
        .iter()
        .find(|(s, _)| *s == scheme)
        .map(|(_, algs)| *algs)
        .ok_or(PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme)?;
    let spki = leaf_spki(cert)?;
    let key = webpki::RawPublicKeyEntity::try_from(&spki)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    for alg in candidates {
        #[allow(deprecated)]
        match key.verify_signature(*alg, message, signature) {
            Ok(()) => return Ok(HandshakeSignatureValid::assertion()),
            Err(webpki::Error::UnsupportedSignatureAlgorithmForPublicKeyContext(_))
            | Err(webpki::Error::UnsupportedSignatureAlgorithmForPublicKey) => continue,
            Err(_) => break,
        }
    }
    Err(rustls::Error::InvalidCertificate(
        CertificateError::BadSignature,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType, PKCS_ECDSA_P256_SHA256,
    };

    struct Issued {
        cert: rcgen::Certificate,
        key: KeyPair,
    }

    fn params(cn: &str, ca: bool, days: (i64, i64)) -> CertificateParams {
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, cn);
        if ca {
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now + time::Duration::days(days.0);
        p.not_after = now + time::Duration::days(days.1);
        p
    }

    fn root(cn: &str) -> Issued {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = params(cn, true, (-1, 30)).self_signed(&key).unwrap();
        Issued { cert, key }
    }

    fn issue(p: CertificateParams, by: &Issued) -> Issued {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_der(by.cert.der(), &by.key).unwrap();
        let cert = p.signed_by(&key, &issuer).unwrap();
        Issued { cert, key }
    }

    fn at(days_from_now: i64) -> UnixTime {
        let now = UnixTime::now().as_secs() as i64 + days_from_now * 86_400;
        UnixTime::since_unix_epoch(Duration::from_secs(now as u64))
    }

    fn verifier(ca: &Issued, sans: &[&str]) -> EdgeClientVerifier {
        EdgeClientVerifier::new(
            ca.cert.pem().as_bytes(),
            sans.iter().map(|s| s.to_string()).collect(),
            true,
        )
        .unwrap()
    }

    #[test]
    fn accepts_a_leaf_of_the_ca_and_through_a_presented_intermediate() {
        let ca = root("root");
        let leaf = issue(params("client", false, (-1, 10)), &ca);
        let v = verifier(&ca, &[]);
        v.verify(leaf.cert.der(), &[], at(0)).unwrap();

        let inter = issue(params("inter", true, (-1, 10)), &ca);
        let leaf2 = issue(params("client2", false, (-1, 10)), &inter);
        v.verify(leaf2.cert.der(), &[inter.cert.der().clone()], at(0))
            .unwrap();
        // Without the intermediate the chain does not reach the CA.
        let err = v.verify(leaf2.cert.der(), &[], at(0)).unwrap_err();
        assert!(matches!(err, EdgeTlsError::UnknownIssuer { .. }), "{err}");
    }

    #[test]
    fn refuses_another_ca_even_with_the_same_name() {
        let ca = root("example.com");
        let other = root("example.com");
        let leaf = issue(params("client", false, (-1, 10)), &other);
        let err = verifier(&ca, &[])
            .verify(leaf.cert.der(), &[], at(0))
            .unwrap_err();
        assert!(matches!(err, EdgeTlsError::UnknownIssuer { .. }), "{err}");
        assert_eq!(
            rustls::Error::from(err),
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        );
    }

    #[test]
    fn a_non_ca_cannot_issue() {
        let ca = root("root");
        let not_ca = issue(params("not-a-ca", false, (-1, 10)), &ca);
        let leaf = issue(params("client", false, (-1, 10)), &not_ca);
        let err = verifier(&ca, &[])
            .verify(leaf.cert.der(), &[not_ca.cert.der().clone()], at(0))
            .unwrap_err();
        assert!(matches!(err, EdgeTlsError::UnknownIssuer { .. }), "{err}");
    }

    #[test]
    fn validity_is_judged_by_the_given_clock() {
        let ca = root("root");
        let leaf = issue(params("client", false, (-1, 10)), &ca);
        let v = verifier(&ca, &[]);
        let err = v.verify(leaf.cert.der(), &[], at(11)).unwrap_err();
        assert!(matches!(err, EdgeTlsError::Expired { .. }), "{err}");
        assert!(matches!(
            rustls::Error::from(err),
            rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. })
        ));
        let err = v.verify(leaf.cert.der(), &[], at(-2)).unwrap_err();
        assert!(matches!(err, EdgeTlsError::NotYetValid { .. }), "{err}");
        // The CA itself expires after 30 days.
        let long = issue(params("client", false, (-1, 100)), &ca);
        let err = v.verify(long.cert.der(), &[], at(40)).unwrap_err();
        assert!(
            matches!(&err, EdgeTlsError::Expired { subject, .. } if subject.contains("root")),
            "{err}"
        );
    }

    #[test]
    fn injected_clock_applies_to_the_rustls_entry_point() {
        #[derive(Debug)]
        struct Later;
        impl TimeProvider for Later {
            fn current_time(&self) -> Option<UnixTime> {
                Some(at(11))
            }
        }
        let ca = root("root");
        let leaf = issue(params("client", false, (-1, 10)), &ca);
        let v = verifier(&ca, &[]).with_time(Arc::new(Later));
        let err = v
            .verify_client_cert(leaf.cert.der(), &[], UnixTime::now())
            .unwrap_err();
        assert!(matches!(
            err,
            rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. })
        ));
    }

    #[test]
    fn subject_alt_names_must_match_when_configured() {
        let ca = root("root");
        let mut p = params("client", false, (-1, 10));
        p.subject_alt_names = vec![
            SanType::DnsName("client.example.com".try_into().unwrap()),
            SanType::URI("spiffe://example.com/client".try_into().unwrap()),
        ];
        let leaf = issue(p, &ca);
        verifier(&ca, &["CLIENT.example.com"])
            .verify(leaf.cert.der(), &[], at(0))
            .unwrap();
        verifier(&ca, &["spiffe://example.com/client"])
            .verify(leaf.cert.der(), &[], at(0))
            .unwrap();
        let err = verifier(&ca, &["other.example.com"])
            .verify(leaf.cert.der(), &[], at(0))
            .unwrap_err();
        assert!(matches!(err, EdgeTlsError::SanNotAllowed { .. }), "{err}");
        let no_sans = issue(params("bare", false, (-1, 10)), &ca);
        assert!(verifier(&ca, &["client.example.com"])
            .verify(no_sans.cert.der(), &[], at(0))
            .is_err());
    }

    #[test]
    fn root_hints_are_the_ca_subjects() {
        let ca = root("root");
        let v = verifier(&ca, &[]);
        let hints = v.root_hint_subjects();
        assert_eq!(hints.len(), 1);
        // The DER of the Name, outer SEQUENCE included.
        assert_eq!(hints[0].as_ref()[0], 0x30);
    }

    #[test]
    fn certified_key_refuses_a_key_of_another_certificate() {
        let ca = root("root");
        let one = issue(params("one", false, (-1, 10)), &ca);
        let two = issue(params("two", false, (-1, 10)), &ca);
        certified_key(
            one.cert.pem().as_bytes(),
            one.key.serialize_pem().as_bytes(),
        )
        .unwrap();
        let err = certified_key(
            one.cert.pem().as_bytes(),
            two.key.serialize_pem().as_bytes(),
        )
        .unwrap_err();
        assert!(matches!(err, EdgeTlsError::KeyMismatch), "{err}");
        assert!(err.to_string().contains("private key"));
        assert!(err.to_string().contains("server certificate"));
        let err = certified_key(b"", one.key.serialize_pem().as_bytes()).unwrap_err();
        assert!(matches!(err, EdgeTlsError::NoCertificate { .. }), "{err}");
    }

    #[test]
    fn certified_key_loads_p384_keys() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let cert = params("p384", false, (-1, 10)).self_signed(&key).unwrap();
        certified_key(cert.pem().as_bytes(), key.serialize_pem().as_bytes()).unwrap();
    }

    #[test]
    fn tls12_handshake_signatures_are_checked_on_the_raw_key() {
        let ca = root("root");
        let leaf = issue(params("client", false, (-1, 10)), &ca);
        let ck = certified_key(
            leaf.cert.pem().as_bytes(),
            leaf.key.serialize_pem().as_bytes(),
        )
        .unwrap();
        let scheme = SignatureScheme::ECDSA_NISTP256_SHA256;
        let signer = ck.key.choose_scheme(&[scheme]).unwrap();
        let message = b"handshake transcript";
        let mut signature = signer.sign(message).unwrap();
        verify_tls12_scheme(message, leaf.cert.der(), scheme, &signature).unwrap();
        assert_eq!(
            verify_tls12_scheme(b"another transcript", leaf.cert.der(), scheme, &signature)
                .unwrap_err(),
            rustls::Error::InvalidCertificate(CertificateError::BadSignature)
        );
        let last = signature.len() - 1;
        signature[last] ^= 1;
        assert!(verify_tls12_scheme(message, leaf.cert.der(), scheme, &signature).is_err());
        // A scheme of another key type does not fit an ECDSA key.
        assert!(verify_tls12_scheme(
            message,
            leaf.cert.der(),
            SignatureScheme::RSA_PKCS1_SHA256,
            &signature
        )
        .is_err());
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_default() {
        let ca = root("root");
        let key = |cn: &str| {
            let i = issue(params(cn, false, (-1, 10)), &ca);
            certified_key(i.cert.pem().as_bytes(), i.key.serialize_pem().as_bytes()).unwrap()
        };
        let (exact, wild, default) = (key("exact"), key("wild"), key("default"));
        let mut sni = SniCertificates::new();
        assert!(sni.lookup(Some("a.example.com")).is_none());
        sni.insert("a.example.com", exact.clone());
        sni.insert("*.example.com", wild.clone());
        let is = |got: Option<Arc<CertifiedKey>>, want: &Arc<CertifiedKey>| {
            Arc::ptr_eq(&got.unwrap(), want)
        };
        assert!(is(sni.lookup(Some("A.Example.com")), &exact));
        assert!(is(sni.lookup(Some("b.example.com")), &wild));
        assert!(is(sni.lookup(Some("x.b.example.com")), &wild));
        assert!(sni.lookup(Some("example.com")).is_none());
        assert!(sni.lookup(None).is_none());
        sni.set_default(default.clone());
        assert!(is(sni.lookup(Some("example.com")), &default));
        assert!(is(sni.lookup(None), &default));
    }
}
