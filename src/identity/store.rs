//! The certificate store: the current SVID (chain + key) and trust bundle, swapped atomically.
//!
//! One writer at a time validates new material before publishing it; readers (rustls cert
//! resolvers and verifiers, the admin page) take an `Arc<Identity>` snapshot per use, so a
//! publish applies to the next handshake and never touches an established connection. Without
//! a published identity every handshake fails: there is no fallback to no authentication.

use std::collections::hash_map::DefaultHasher;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use tokio::sync::watch;

use crate::identity::bundle::{parse_certs, TrustBundle};
use crate::identity::spiffe::{validate_trust_domain, SpiffeId};
use crate::identity::svid::{ca_trust_domain, verify_svid, PeerRole, PROVIDER};
use crate::identity::IdentityError;

/// A workload's X.509-SVID: its SPIFFE ID, serial, expiry and certificate chain.
#[derive(Clone)]
pub struct Svid {
    pub id: SpiffeId,
    /// Lower-case hex of the serial number.
    pub serial_hex: String,
    pub not_after: SystemTime,
    chain: Vec<CertificateDer<'static>>,
}

impl Svid {
    /// Leaf first, then intermediates (DER).
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }
}

impl fmt::Debug for Svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Svid")
            .field("id", &self.id)
            .field("serial_hex", &self.serial_hex)
            .field("not_after", &self.not_after)
            .field("chain_len", &self.chain.len())
            .finish()
    }
}

/// One published, validated identity: the SVID with its key, and the trust bundle.
pub struct Identity {
    pub svid: Svid,
    pub bundle: TrustBundle,
    certified_key: Arc<CertifiedKey>,
    digest: u64,
}

impl Identity {
    /// The rustls certificate + signing key presented in handshakes.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.certified_key.clone()
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("svid", &self.svid)
            .field("bundle", &self.bundle)
            .finish_non_exhaustive()
    }
}

/// Counters read at scrape time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Successful publishes that changed the identity (the first load included).
    pub rotations: u64,
    /// Updates refused by validation (the previous identity stayed).
    pub rejected: u64,
    /// Failed attempts of an identity source to obtain new material (CA unreachable,
    /// refused, wrong identity, ...), recorded by the source.
    pub rotation_failures: u64,
}

/// The live identity of this sidecar. Clones share one store.
#[derive(Clone)]
pub struct CertStore {
    inner: Arc<Inner>,
}

struct Inner {
    trust_domain: String,
    /// The one SPIFFE ID this store accepts, when it serves a known workload.
    expected: Option<SpiffeId>,
    current: RwLock<Option<Arc<Identity>>>,
    writer: Mutex<()>,
    rejected: AtomicU64,
    rotation_failures: AtomicU64,
    generation: watch::Sender<u64>,
}

impl CertStore {
    /// An empty store for `trust_domain`: every handshake fails until a first publish.
    pub fn new(trust_domain: &str) -> CertStore {
        CertStore::with_expected(trust_domain, None)
    }

    /// An empty store for the workload whose identity is `id`: material naming any other
    /// SPIFFE ID (another service account's files mounted by mistake) is refused, at start-up
    /// and on every rotation.
    pub fn for_workload(id: &SpiffeId) -> CertStore {
        CertStore::with_expected(id.trust_domain(), Some(id.clone()))
    }

    fn with_expected(trust_domain: &str, expected: Option<SpiffeId>) -> CertStore {
        let (generation, _) = watch::channel(0);
        CertStore {
            inner: Arc::new(Inner {
                expected,
                trust_domain: trust_domain.to_string(),
                current: RwLock::new(None),
                writer: Mutex::new(()),
                rejected: AtomicU64::new(0),
                rotation_failures: AtomicU64::new(0),
                generation,
            }),
        }
    }

    /// The trust domain this workload's SVIDs must belong to.
    pub fn trust_domain(&self) -> &str {
        &self.inner.trust_domain
    }

    /// Validates new material and, if it is good, makes it the current identity for every new
    /// handshake. `roots_pem` holds one or more CA certificates: a root whose only URI SAN is
    /// `spiffe://<other-domain>` is trusted for that domain, every other one for the store's.
    ///
    /// Republishing identical material is a no-op. A refused update is logged, counted in
    /// [`StoreStats::rejected`] and returned; the current identity stays.
    pub fn publish_pem(
        &self,
        chain_pem: &[u8],
        key_pem: &[u8],
        roots_pem: &[u8],
    ) -> Result<(), IdentityError> {
        let _writer = self.inner.writer.lock().unwrap_or_else(|e| e.into_inner());
        let digest = digest(chain_pem, key_pem, roots_pem);
        if self.current().is_some_and(|c| c.digest == digest) {
            return Ok(());
        }
        match self.validate(chain_pem, key_pem, roots_pem, digest) {
            Ok(identity) => {
                tracing::info!(
                    spiffe_id = %identity.svid.id,
                    serial = %identity.svid.serial_hex,
                    not_after = ?identity.svid.not_after,
                    trust_domains = ?identity.bundle.trust_domains(),
                    "published new workload identity"
                );
                *self
                    .inner
                    .current
                    .write()
                    .unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(identity));
                self.inner.generation.send_modify(|g| *g += 1);
                Ok(())
            }
            Err(e) => {
                self.inner.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "refused new identity material; keeping the current one");
                Err(e)
            }
        }
    }

    /// A snapshot of the current identity, if one was published.
    pub fn current(&self) -> Option<Arc<Identity>> {
        self.inner
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Rotation and rejection counters.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            // Every successful publish bumps the generation: it is the rotation count.
            rotations: *self.inner.generation.borrow(),
            rejected: self.inner.rejected.load(Ordering::Relaxed),
            rotation_failures: self.inner.rotation_failures.load(Ordering::Relaxed),
        }
    }

    /// Counts a failed attempt of the identity source to renew (see
    /// [`StoreStats::rotation_failures`]); the current identity stays.
    pub fn record_rotation_failure(&self) {
        self.inner.rotation_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// A receiver of the generation counter, bumped on each successful publish.
    pub fn changed(&self) -> watch::Receiver<u64> {
        self.inner.generation.subscribe()
    }

    fn validate(
        &self,
        chain_pem: &[u8],
        key_pem: &[u8],
        roots_pem: &[u8],
        digest: u64,
    ) -> Result<Identity, IdentityError> {
        let store_domain = validate_trust_domain(&self.inner.trust_domain).map_err(|source| {
            IdentityError::BadTrustDomain {
                domain: self.inner.trust_domain.clone(),
                source,
            }
        })?;
        let chain = parse_certs(chain_pem, "the certificate chain")?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| IdentityError::BadPem {
            what: "the private key",
            detail: e.to_string(),
        })?;
        let mut bundle = TrustBundle::default();
        for root in parse_certs(roots_pem, "the root certificates")? {
            let domain = ca_trust_domain(&root).unwrap_or_else(|| store_domain.clone());
            bundle.add_der(&domain, root)?;
        }
        // Same roots as now (an SVID renewal): keep the current bundle, so what it learned
        // about peer chains (see `TrustBundle::fingerprint`) carries over and resumed sessions
        // stay cheap to re-judge.
        if let Some(current) = self.current() {
            if current.bundle.fingerprint() == bundle.fingerprint() {
                bundle = current.bundle.clone();
            }
        }
        let certified_key =
            CertifiedKey::from_der(chain.clone(), key, &PROVIDER).map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => IdentityError::KeyMismatch,
                other => IdentityError::BadKey {
                    detail: other.to_string(),
                },
            })?;
        let now = UnixTime::now();
        let invalid = |reason| IdentityError::InvalidSvid { reason };
        let id =
            verify_svid(&bundle, &chain[0], &chain[1..], now, PeerRole::Server).map_err(invalid)?;
        verify_svid(&bundle, &chain[0], &chain[1..], now, PeerRole::Client).map_err(invalid)?;
        if id.trust_domain() != store_domain {
            return Err(IdentityError::WrongTrustDomain {
                id: id.to_string(),
                expected: store_domain,
            });
        }
        if let Some(expected) = &self.inner.expected {
            if &id != expected {
                return Err(IdentityError::WrongIdentity {
                    id: id.to_string(),
                    expected: expected.to_string(),
                });
            }
        }
        let (serial_hex, not_after) = leaf_facts(&chain[0])?;
        Ok(Identity {
            svid: Svid {
                id,
                serial_hex,
                not_after,
                chain,
            },
            bundle,
            certified_key: Arc::new(certified_key),
            digest,
        })
    }
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("trust_domain", &self.inner.trust_domain)
            .field("current", &self.current())
            .field("stats", &self.stats())
            .finish()
    }
}

/// A fingerprint of identity material as handed to [`CertStore::publish_pem`]; the store
/// skips material it already holds, the file source skips material it already handed over.
pub(crate) fn digest(chain: &[u8], key: &[u8], roots: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    (chain, key, roots).hash(&mut h);
    h.finish()
}

fn leaf_facts(leaf: &CertificateDer<'_>) -> Result<(String, SystemTime), IdentityError> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| {
        IdentityError::BadCertificate {
            what: "the certificate chain",
            detail: e.to_string(),
        }
    })?;
    let serial_hex = cert
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let secs = cert.validity().not_after.timestamp().max(0) as u64;
    Ok((
        serial_hex,
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
    ))
}
