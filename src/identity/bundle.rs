//! The trust bundle: CA certificates per trust domain. A peer's SVID must chain to a root of
//! the bundle of its own trust domain; a trust domain absent from the bundle is not trusted.
//!
//! Each bundle also remembers which peer chains it was seen to anchor ([`AnchoredChains`]),
//! so a resumed TLS session, which carries its peer's chain without re-verification, can be
//! re-judged against the *current* bundle by a lookup. A different set of roots is a different
//! bundle with an empty memory (and a different [`TrustBundle::fingerprint`]), so nothing
//! verified under retired roots is ever found.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::crypto::hash::Hash;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};

use crate::identity::spiffe::validate_trust_domain;
use crate::identity::svid::PeerRole;
use crate::identity::IdentityError;

/// Roots per trust domain, with the webpki trust anchors prepared once. Cheap to clone.
#[derive(Clone, Default)]
pub struct TrustBundle {
    domains: BTreeMap<String, Arc<Roots>>,
    /// Every anchor of every domain, prepared once for the per-handshake path validation.
    all: Arc<Vec<TrustAnchor<'static>>>,
    /// SHA-256 over every (domain, root): equal exactly when the roots are.
    fingerprint: [u8; 32],
    /// Shared by clones; replaced whenever a root is added.
    anchored: Arc<AnchoredChains>,
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
        self.fingerprint = sha256(self.domains.iter().flat_map(|(d, r)| {
            std::iter::once(d.as_bytes()).chain(r.certs.iter().map(|c| c.as_ref()))
        }));
        self.anchored = Arc::default();
        Ok(())
    }

    /// A digest of the roots: two bundles with the same fingerprint trust exactly the same
    /// roots for the same trust domains. Session tickets are bound to it.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    /// The peer chains this bundle was seen to anchor (see the module documentation).
    pub(crate) fn anchored(&self) -> &AnchoredChains {
        &self.anchored
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

/// When a chain that path validation accepted is valid: the latest `notBefore` and the
/// earliest `notAfter` of its certificates (the root excluded, as webpki does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Validity {
    pub not_before: UnixTime,
    pub not_after: UnixTime,
}

impl Validity {
    /// The same comparisons webpki makes, with the same errors (so the same reason labels).
    pub(crate) fn check(&self, now: UnixTime) -> Result<(), rustls::CertificateError> {
        if now < self.not_before {
            Err(rustls::CertificateError::NotValidYetContext {
                time: now,
                not_before: self.not_before,
            })
        } else if now > self.not_after {
            Err(rustls::CertificateError::ExpiredContext {
                time: now,
                not_after: self.not_after,
            })
        } else {
            Ok(())
        }
    }
}

/// Peer chains a bundle anchors, by role and digest, with their validity; and a count of
/// resumed sessions refused under the bundle (client ticket caches forget their tickets when
/// it moves).
#[derive(Debug, Default)]
pub(crate) struct AnchoredChains {
    chains: Mutex<HashMap<[u8; 32], Validity>>,
    refusals: AtomicU64,
}

/// Chains remembered per bundle; past this, expired ones are forgotten, then all. Forgetting
/// costs one path validation on the next resumption of that chain, nothing more.
const MAX_ANCHORED_CHAINS: usize = 4096;

impl AnchoredChains {
    /// The validity of a chain this bundle anchored for a peer of `role`, if remembered.
    pub(crate) fn lookup(
        &self,
        role: PeerRole,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Option<Validity> {
        let digest = chain_digest(role, leaf, intermediates);
        let chains = self.chains.lock().unwrap_or_else(|e| e.into_inner());
        chains.get(&digest).copied()
    }

    /// Remembers that this bundle anchors the chain for a peer of `role` (path validation
    /// accepted it). A chain that cannot be parsed is not remembered.
    pub(crate) fn record(
        &self,
        role: PeerRole,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) {
        let Some(validity) = validity(leaf, intermediates) else {
            return;
        };
        let digest = chain_digest(role, leaf, intermediates);
        let mut chains = self.chains.lock().unwrap_or_else(|e| e.into_inner());
        if chains.len() >= MAX_ANCHORED_CHAINS && !chains.contains_key(&digest) {
            chains.retain(|_, v| v.not_after >= now);
            if chains.len() >= MAX_ANCHORED_CHAINS {
                chains.clear();
            }
        }
        chains.insert(digest, validity);
    }

    /// Counts a resumed session refused under this bundle.
    pub(crate) fn refused(&self) {
        self.refusals.fetch_add(1, Ordering::Relaxed);
    }

    /// How many resumed sessions were refused under this bundle.
    pub(crate) fn refusals(&self) -> u64 {
        self.refusals.load(Ordering::Relaxed)
    }
}

fn chain_digest(
    role: PeerRole,
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> [u8; 32] {
    let role: &[u8] = match role {
        PeerRole::Client => b"client",
        PeerRole::Server => b"server",
    };
    sha256(
        [role, leaf.as_ref()]
            .into_iter()
            .chain(intermediates.iter().map(|c| c.as_ref())),
    )
}

/// The validity window of a chain, `None` if a certificate cannot be parsed.
fn validity(leaf: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) -> Option<Validity> {
    let unix = |t: x509_parser::time::ASN1Time| {
        UnixTime::since_unix_epoch(Duration::from_secs(t.timestamp().max(0) as u64))
    };
    let mut window: Option<Validity> = None;
    for cert in std::iter::once(leaf).chain(intermediates) {
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
        let (not_before, not_after) = (
            unix(parsed.validity().not_before),
            unix(parsed.validity().not_after),
        );
        window = Some(match window {
            None => Validity {
                not_before,
                not_after,
            },
            Some(w) => Validity {
                not_before: w.not_before.max(not_before),
                not_after: w.not_after.min(not_after),
            },
        });
    }
    window
}

/// SHA-256 over length-prefixed `parts` (so ["ab", "c"] and ["a", "bc"] differ).
fn sha256<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> [u8; 32] {
    let mut ctx = sha256_provider().start();
    for part in parts {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part);
    }
    let mut digest = [0u8; 32];
    // A SHA-256 output is 32 bytes (the provider is asserted to be SHA-256 below).
    digest.copy_from_slice(ctx.finish().as_ref());
    digest
}

/// rustls exposes its hash implementations through the cipher suites that use them.
fn sha256_provider() -> &'static dyn Hash {
    let hash = rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256
        .tls13()
        .expect("TLS13_AES_128_GCM_SHA256 is a TLS 1.3 suite")
        .common
        .hash_provider;
    debug_assert_eq!(
        hash.algorithm(),
        rustls::crypto::hash::HashAlgorithm::SHA256
    );
    hash
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

#[cfg(test)]
mod tests {
    use super::*;

    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

    const TD: &str = "cluster.local";

    fn ca_pem(name: &str) -> String {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.self_signed(&key).unwrap().pem()
    }

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    fn at(secs: u64) -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs(secs))
    }

    #[test]
    fn fingerprint_follows_the_roots() {
        let (a, b) = (ca_pem("a"), ca_pem("b"));
        let one = TrustBundle::from_pem(TD, a.as_bytes()).unwrap();
        let same = TrustBundle::from_pem(TD, a.as_bytes()).unwrap();
        assert_eq!(one.fingerprint(), same.fingerprint());
        let mut more = one.clone();
        more.add(TD, b.as_bytes()).unwrap();
        assert_ne!(one.fingerprint(), more.fingerprint());
        let elsewhere = TrustBundle::from_pem("example.org", a.as_bytes()).unwrap();
        assert_ne!(
            one.fingerprint(),
            elsewhere.fingerprint(),
            "the domain counts"
        );
        assert_ne!(one.fingerprint(), TrustBundle::default().fingerprint());
    }

    #[test]
    fn anchored_chains_are_per_bundle_and_per_role() {
        let (a, b) = (ca_pem("a"), ca_pem("b"));
        let peer = der(&ca_pem("peer"));
        let one = TrustBundle::from_pem(TD, a.as_bytes()).unwrap();
        let clone = one.clone();
        let mut more = one.clone();
        more.add(TD, b.as_bytes()).unwrap();

        one.anchored()
            .record(PeerRole::Client, &peer, &[], UnixTime::now());
        let found = clone.anchored().lookup(PeerRole::Client, &peer, &[]);
        assert!(found.is_some(), "clones share what the bundle learned");
        assert!(one
            .anchored()
            .lookup(PeerRole::Server, &peer, &[])
            .is_none());
        assert!(one
            .anchored()
            .lookup(PeerRole::Client, &peer, std::slice::from_ref(&peer))
            .is_none());
        assert!(
            more.anchored()
                .lookup(PeerRole::Client, &peer, &[])
                .is_none(),
            "another set of roots starts with no memory"
        );

        one.anchored().refused();
        assert_eq!(clone.anchored().refusals(), 1);
        assert_eq!(more.anchored().refusals(), 0);
    }

    #[test]
    fn validity_is_judged_like_webpki() {
        let v = Validity {
            not_before: at(100),
            not_after: at(200),
        };
        assert!(v.check(at(100)).is_ok());
        assert!(v.check(at(200)).is_ok());
        assert!(matches!(
            v.check(at(201)),
            Err(rustls::CertificateError::ExpiredContext { .. })
        ));
        assert!(matches!(
            v.check(at(99)),
            Err(rustls::CertificateError::NotValidYetContext { .. })
        ));
    }
}
