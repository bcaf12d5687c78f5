//! The trust bundle: CA certificates per trust domain. A peer's SVID must chain to a root of
//! the bundle of its own trust domain; a trust domain absent from the bundle is not trusted.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, TrustAnchor};

use crate::identity::spiffe::validate_trust_domain;
use crate::identity::IdentityError;

/// Roots per trust domain, with the webpki trust anchors prepared once. Cheap to clone.
#[derive(Clone, Default)]
pub struct TrustBundle {
    domains: BTreeMap<String, Arc<Roots>>,
    /// Every anchor of every domain, prepared once for the per-handshake path validation.
    all: Arc<Vec<TrustAnchor<'static>>>,
}

struct Roots {
    certs: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
}

impl TrustBundle {
    /// A bundle holding the CA certificates in `pem` (one or more) for `trust_domain`.
    pub fn from_pem(trust_domain: &str, pem: &[u8]) -> Result<TrustBundle, IdentityError> {
        let mut bundle = TrustBundle::default();
        bundle.add(trust_domain, pem)?;
        Ok(bundle)
    }

    /// Adds the CA certificates in `pem` to `trust_domain` (a new domain, or more roots for a
    /// known one, as during a root rollover).
    pub fn add(&mut self, trust_domain: &str, pem: &[u8]) -> Result<(), IdentityError> {
        let certs = parse_certs(pem, "the trust bundle")?;
        for cert in certs {
            self.add_der(trust_domain, cert)?;
        }
        Ok(())
    }

    /// Adds one DER CA certificate to `trust_domain`.
    pub fn add_der(
        &mut self,
        trust_domain: &str,
        cert: CertificateDer<'static>,
    ) -> Result<(), IdentityError> {
        let domain = validate_trust_domain(trust_domain).map_err(|source| {
            IdentityError::BadTrustDomain {
                domain: trust_domain.to_string(),
                source,
            }
        })?;
        check_is_ca(&cert)?;
        let anchor = webpki::anchor_from_trusted_cert(&cert)
            .map_err(|e| IdentityError::BadCertificate {
                what: "the trust bundle",
                detail: e.to_string(),
            })?
            .to_owned();
        let entry = self.domains.entry(domain).or_insert_with(|| {
            Arc::new(Roots {
                certs: Vec::new(),
                anchors: Vec::new(),
            })
        });
        if entry.certs.contains(&cert) {
            return Ok(());
        }
        let mut roots = Roots {
            certs: entry.certs.clone(),
            anchors: entry.anchors.clone(),
        };
        roots.certs.push(cert);
        roots.anchors.push(anchor);
        *entry = Arc::new(roots);
        self.all = Arc::new(
            self.domains
                .values()
                .flat_map(|r| r.anchors.iter().cloned())
                .collect(),
        );
        Ok(())
    }

    /// The trust domains this bundle holds roots for, sorted.
    pub fn trust_domains(&self) -> Vec<String> {
        self.domains.keys().cloned().collect()
    }

    /// True when the bundle holds no root at all.
    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }

    /// The roots of one trust domain, DER.
    pub fn roots(&self, trust_domain: &str) -> Option<&[CertificateDer<'static>]> {
        self.domains.get(trust_domain).map(|r| r.certs.as_slice())
    }

    pub(crate) fn anchors(&self, trust_domain: &str) -> Option<&[TrustAnchor<'static>]> {
        self.domains.get(trust_domain).map(|r| r.anchors.as_slice())
    }

    pub(crate) fn all_anchors(&self) -> &[TrustAnchor<'static>] {
        &self.all
    }
}

impl fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.domains.iter().map(|(d, r)| (d, r.certs.len())))
            .finish()
    }
}

/// Parses every `CERTIFICATE` block of a PEM buffer; at least one is required.
pub(crate) fn parse_certs(
    pem: &[u8],
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IdentityError::BadPem {
            what,
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(IdentityError::NoCertificates { what });
    }
    Ok(certs)
}

fn check_is_ca(cert: &CertificateDer<'_>) -> Result<(), IdentityError> {
    let bad = |detail: String| IdentityError::BadCertificate {
        what: "the trust bundle",
        detail,
    };
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| bad(e.to_string()))?;
    let is_ca = parsed
        .basic_constraints()
        .map_err(|e| bad(e.to_string()))?
        .is_some_and(|bc| bc.value.ca);
    if !is_ca {
        return Err(IdentityError::NotACa {
            subject: parsed.subject().to_string(),
        });
    }
    Ok(())
}
