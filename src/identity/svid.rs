//! X.509-SVID verification: webpki chain validation to the trust bundle first, then the SPIFFE
//! X.509-SVID rules (standards/X509-SVID.md), then the trust domain of the ID.
//!
//! Both the rustls verifiers in [`crate::tls`] and the certificate store (which checks its own
//! new material before publishing it) go through [`verify_svid`], so a certificate the store
//! accepts is one its peers will accept too.

use std::sync::{Arc, LazyLock};

use rustls::crypto::CryptoProvider;
use rustls::{CertificateError, OtherError};
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::extensions::GeneralName;

use crate::identity::bundle::TrustBundle;
use crate::identity::spiffe::{SpiffeId, SpiffeIdError};

/// Which side of a handshake the verified certificate belongs to: decides the required EKU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRole {
    /// A TLS client (EKU must allow clientAuth when present).
    Client,
    /// A TLS server (EKU must allow serverAuth when present).
    Server,
}

/// Why a certificate that chains correctly is still not an acceptable X.509-SVID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    #[error("the certificate cannot be parsed: {0}")]
    Unparsable(String),
    #[error("the leaf certificate is a CA certificate (basicConstraints cA=true)")]
    CaLeaf,
    #[error("the leaf certificate has keyCertSign or cRLSign in its key usage")]
    SigningKeyUsage,
    #[error("the certificate has no URI SAN")]
    NoUriSan,
    #[error("the certificate has {0} URI SANs; an SVID has exactly one")]
    MultipleUriSans(usize),
    #[error("the URI SAN {0:?} is not a spiffe:// URI")]
    NotSpiffe(String),
    #[error("the URI SAN {uri:?} is not a valid SPIFFE ID: {source}")]
    BadSpiffeId { uri: String, source: SpiffeIdError },
    #[error("the SPIFFE ID {0} has no path; a workload SVID needs one")]
    TrustDomainId(String),
    #[error("the certificate has an empty subject but a non-critical SAN extension")]
    NonCriticalSan,
    #[error("trust domain {0:?} is not in the trust bundle")]
    UntrustedDomain(String),
    #[error("the certificate of {id} does not chain to a root of its trust domain")]
    WrongDomainRoot { id: String },
    #[error("peer identity {got} is not one of the allowed identities [{allowed}]")]
    IdentityMismatch { got: String, allowed: String },
    #[error("no local identity has been loaded yet, so no peer can be verified")]
    NoIdentity,
}

impl SvidError {
    /// A short snake_case label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            SvidError::Unparsable(_) => "bad_encoding",
            SvidError::CaLeaf => "ca_leaf",
            SvidError::SigningKeyUsage => "leaf_signing_usage",
            SvidError::NoUriSan => "no_uri_san",
            SvidError::MultipleUriSans(_) => "multiple_uri_sans",
            SvidError::NotSpiffe(_) => "not_spiffe",
            SvidError::BadSpiffeId { .. } | SvidError::TrustDomainId(_) => "bad_spiffe_id",
            SvidError::NonCriticalSan => "non_critical_san",
            SvidError::UntrustedDomain(_) | SvidError::WrongDomainRoot { .. } => "untrusted_domain",
            SvidError::IdentityMismatch { .. } => "identity_mismatch",
            SvidError::NoIdentity => "no_identity",
        }
    }
}

impl From<SvidError> for rustls::Error {
    fn from(e: SvidError) -> Self {
        match e {
            SvidError::Unparsable(_) => {
                rustls::Error::InvalidCertificate(CertificateError::BadEncoding)
            }
            other => rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(
                Arc::new(other),
            ))),
        }
    }
}

/// The one crypto provider outrider uses (aws-lc-rs), for signature algorithms and keys.
pub(crate) static PROVIDER: LazyLock<Arc<CryptoProvider>> =
    LazyLock::new(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));

/// Verifies a peer's X.509-SVID: webpki path validation at `now` to the bundle (EKU per `role`,
/// intermediates allowed), then the SVID rules, then that the chain ends at a root of the ID's
/// own trust domain. Returns the peer's SPIFFE ID.
pub fn verify_svid(
    bundle: &TrustBundle,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    role: PeerRole,
) -> Result<SpiffeId, rustls::Error> {
    let cert = webpki::EndEntityCert::try_from(end_entity).map_err(pki_error)?;
    let anchors = bundle.all_anchors();
    let usage = match role {
        PeerRole::Client => webpki::KeyUsage::client_auth(),
        PeerRole::Server => webpki::KeyUsage::server_auth(),
    };
    let path = cert
        .verify_for_usage(
            PROVIDER.signature_verification_algorithms.all,
            anchors,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(pki_error)?;
    let id = svid_id(end_entity)?;
    let domain_anchors = bundle
        .anchors(id.trust_domain())
        .ok_or_else(|| SvidError::UntrustedDomain(id.trust_domain().to_string()))?;
    let root = path.anchor();
    let own_root = domain_anchors.iter().any(|a| {
        a.subject.as_ref() == root.subject.as_ref()
            && a.subject_public_key_info.as_ref() == root.subject_public_key_info.as_ref()
    });
    if !own_root {
        return Err(SvidError::WrongDomainRoot { id: id.to_string() }.into());
    }
    Ok(id)
}

/// Applies the X.509-SVID leaf rules (no chain validation) and returns the SPIFFE ID.
pub fn svid_id(der: &CertificateDer<'_>) -> Result<SpiffeId, SvidError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| SvidError::Unparsable(e.to_string()))?;
    let unparsable = |e: x509_parser::error::X509Error| SvidError::Unparsable(e.to_string());
    if let Some(bc) = cert.basic_constraints().map_err(unparsable)? {
        if bc.value.ca {
            return Err(SvidError::CaLeaf);
        }
    }
    if let Some(ku) = cert.key_usage().map_err(unparsable)? {
        if ku.value.key_cert_sign() || ku.value.crl_sign() {
            return Err(SvidError::SigningKeyUsage);
        }
    }
    let san = cert.subject_alternative_name().map_err(unparsable)?;
    let uris: Vec<&str> = san
        .as_ref()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(uri) => Some(*uri),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let uri = match uris.as_slice() {
        [] => return Err(SvidError::NoUriSan),
        [one] => *one,
        many => return Err(SvidError::MultipleUriSans(many.len())),
    };
    let is_spiffe = uri
        .get(..7)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("spiffe:"));
    if !is_spiffe {
        return Err(SvidError::NotSpiffe(uri.to_string()));
    }
    let id = SpiffeId::parse(uri).map_err(|source| SvidError::BadSpiffeId {
        uri: uri.to_string(),
        source,
    })?;
    if id.is_trust_domain_id() {
        return Err(SvidError::TrustDomainId(id.to_string()));
    }
    let subject_empty = cert.subject().iter().next().is_none();
    if subject_empty && san.is_some_and(|s| !s.critical) {
        return Err(SvidError::NonCriticalSan);
    }
    Ok(id)
}

/// The URI SAN `spiffe://<td>` of a CA certificate, if it has exactly one that parses.
pub(crate) fn ca_trust_domain(der: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(uri) => Some(*uri),
        _ => None,
    });
    let (Some(uri), None) = (uris.next(), uris.next()) else {
        return None;
    };
    SpiffeId::parse(uri)
        .ok()
        .map(|id| id.trust_domain().to_string())
}

/// Maps a webpki error to the closest rustls certificate error (mirrors rustls' own mapping
/// for the cases that matter here, and names the SVID ones).
fn pki_error(e: webpki::Error) -> rustls::Error {
    use webpki::Error as E;
    let ce = match e {
        E::BadDer | E::BadDerTime | E::TrailingData(_) => CertificateError::BadEncoding,
        E::CertNotValidYet { time, not_before } => {
            CertificateError::NotValidYetContext { time, not_before }
        }
        E::CertExpired { time, not_after } => CertificateError::ExpiredContext { time, not_after },
        E::InvalidCertValidity => CertificateError::Expired,
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        // webpki finds issuers by name: a certificate from another CA with the same subject
        // (every Istio-style root of a trust domain looks alike) fails on the signature. To
        // the operator that is an unknown issuer, not a corrupted certificate.
        E::InvalidSignatureForPublicKey => CertificateError::UnknownIssuer,
        E::CaUsedAsEndEntity => return SvidError::CaLeaf.into(),
        #[allow(deprecated)]
        E::RequiredEkuNotFound | E::RequiredEkuNotFoundContext(_) => {
            CertificateError::InvalidPurpose
        }
        E::CertRevoked => CertificateError::Revoked,
        other => CertificateError::Other(OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(ce)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_snake_case() {
        for e in [
            SvidError::CaLeaf,
            SvidError::NoUriSan,
            SvidError::MultipleUriSans(2),
            SvidError::NotSpiffe("https://x".into()),
            SvidError::UntrustedDomain("x".into()),
            SvidError::NoIdentity,
        ] {
            assert!(e
                .reason()
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '_'));
        }
    }
}
