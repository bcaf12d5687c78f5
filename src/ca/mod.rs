//! The mesh CA: a root key and certificate, and issuance of workload certificates (X.509-SVIDs)
//! with Istio's CA profile (empty subject, one critical URI SAN, server + client auth).
//!
//! [`Authority`] is a loaded CA usable in-process (tests, the demo, the CSR service); the
//! service itself is [`server`] (Istio's protocol, [`proto`]), authenticating first requests
//! with [`token`]s; [`rotation`] is the CA directory layout and the root rotation steps.
//! The `outrider ca ...` commands in [`commands`] are thin wrappers around them.

pub mod commands;
pub mod impersonation;
pub mod rotation;
/// Istio's CA protocol (kept under `ca` too, where the service uses it).
pub use crate::ca_protocol as proto;
pub mod server;
pub mod token;

use std::fs::OpenOptions;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::identity::spiffe::validate_trust_domain;
use crate::identity::svid::ca_trust_domain;
use crate::identity::{SpiffeId, SpiffeIdError};

/// The root certificate file of a CA directory (also the trust bundle handed to workloads).
pub const ROOT_CERT: &str = "root-cert.pem";
/// The root private key file of a CA directory (mode 0600).
pub const ROOT_KEY: &str = "root-key.pem";

/// How far notBefore is backdated, for clock skew between machines (Istio: 2 minutes).
const BACKDATE: Duration = Duration::from_secs(120);

/// Why a CA operation failed. Messages are plain sentences for the command line.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("CA directory {0} does not exist")]
    DirMissing(PathBuf),
    #[error("a CA already exists in {0}; pass --force to replace it")]
    AlreadyExists(PathBuf),
    #[error("cannot read certificate {path}: {source}")]
    ReadCert {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read key {path}: {source}")]
    ReadKey {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a usable CA certificate: {detail}")]
    BadCert { path: PathBuf, detail: String },
    #[error("{path} is not a usable private key: {detail}")]
    BadKey { path: PathBuf, detail: String },
    #[error("the key {path} does not belong to the CA certificate next to it")]
    KeyMismatch { path: PathBuf },
    #[error("the CA certificate {path} has no spiffe://<trust-domain> URI SAN, so its trust domain is unknown")]
    NoTrustDomain { path: PathBuf },
    #[error("invalid trust domain {domain:?}: {source}")]
    BadTrustDomain {
        domain: String,
        source: SpiffeIdError,
    },
    #[error("invalid {field} {value:?}: {reason}")]
    BadName {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("invalid DNS name {0:?}")]
    BadDnsName(String),
    #[error("invalid duration {value:?}: {reason}")]
    BadDuration { value: String, reason: &'static str },
    #[error(transparent)]
    Impersonation(#[from] impersonation::ImpersonationError),
    #[error("invalid CA service setting {setting}: {reason}")]
    BadSetting {
        setting: &'static str,
        reason: &'static str,
    },
    #[error(
        "the CA certificate expired at {not_after}; make a new CA with `outrider ca init --force`"
    )]
    RootExpired { not_after: OffsetDateTime },
    #[error("cannot create directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the certificate signing request is invalid: {0}")]
    BadCsr(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("root rotation in {dir}: {detail}")]
    Rotation { dir: PathBuf, detail: String },
    #[error("certificate generation failed: {0}")]
    Generate(String),
}

/// A certificate signed by the CA from a caller's CSR.
#[derive(Debug, Clone)]
pub struct SignedLeaf {
    pub pem: String,
    /// Lower-case hex serial number.
    pub serial_hex: String,
    pub not_after: SystemTime,
}

/// A loaded CA: root certificate and key.
pub struct Authority {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key: KeyPair,
    trust_domain: String,
    not_after: OffsetDateTime,
    serial_hex: String,
}

/// A freshly issued workload certificate with its key and the root that signed it.
#[derive(Clone)]
pub struct IssuedSvid {
    /// The leaf certificate (the root signs directly, so the chain is the leaf alone).
    pub chain_pem: String,
    /// PKCS#8 private key (P-256).
    pub key_pem: String,
    /// The CA's root certificate: the trust bundle for the workload.
    pub root_pem: String,
    pub id: SpiffeId,
    /// Lower-case hex serial number.
    pub serial_hex: String,
    pub not_after: SystemTime,
}

impl std::fmt::Debug for IssuedSvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedSvid")
            .field("id", &self.id)
            .field("serial_hex", &self.serial_hex)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("trust_domain", &self.trust_domain)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// Creates a new root CA in `dir` (created if missing): `root-cert.pem` and `root-key.pem`
    /// (mode 0600). Refuses to replace an existing CA unless `force`.
    pub fn init(
        dir: &Path,
        trust_domain: &str,
        ttl: Duration,
        force: bool,
    ) -> Result<Authority, CaError> {
        let trust_domain =
            validate_trust_domain(trust_domain).map_err(|source| CaError::BadTrustDomain {
                domain: trust_domain.to_string(),
                source,
            })?;
        let cert_path = dir.join(ROOT_CERT);
        let key_path = dir.join(ROOT_KEY);
        if !force && (cert_path.exists() || key_path.exists()) {
            return Err(CaError::AlreadyExists(dir.to_path_buf()));
        }
        std::fs::create_dir_all(dir).map_err(|source| CaError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;

        let (cert_pem, key_pem) = generate_root(&trust_domain, ttl)?;
        rotation::reset(dir);
        write_file(&cert_path, cert_pem.as_bytes(), 0o644)?;
        write_file(&key_path, key_pem.as_bytes(), 0o600)?;
        Authority::load(dir)
    }

    /// Loads the CA in `dir` (`root-cert.pem` + `root-key.pem`: the signing root).
    pub fn load(dir: &Path) -> Result<Authority, CaError> {
        if !dir.is_dir() {
            return Err(CaError::DirMissing(dir.to_path_buf()));
        }
        Authority::load_pair(&dir.join(ROOT_CERT), &dir.join(ROOT_KEY))
    }

    /// Loads a root certificate and its key from two files.
    pub fn load_pair(cert_path: &Path, key_path: &Path) -> Result<Authority, CaError> {
        let (cert_path, key_path) = (cert_path.to_path_buf(), key_path.to_path_buf());
        let cert_pem = std::fs::read_to_string(&cert_path).map_err(|source| CaError::ReadCert {
            path: cert_path.clone(),
            source,
        })?;
        let key_pem = std::fs::read_to_string(&key_path).map_err(|source| CaError::ReadKey {
            path: key_path.clone(),
            source,
        })?;
        let bad_cert = |detail: String| CaError::BadCert {
            path: cert_path.clone(),
            detail,
        };
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| bad_cert(e.to_string()))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| CaError::BadKey {
            path: key_path.clone(),
            detail: e.to_string(),
        })?;
        let (not_after, spki, serial_hex) = {
            let (_, x509) = x509_parser::parse_x509_certificate(cert_der.as_ref())
                .map_err(|e| bad_cert(e.to_string()))?;
            let is_ca = x509
                .basic_constraints()
                .map_err(|e| bad_cert(e.to_string()))?
                .is_some_and(|bc| bc.value.ca);
            if !is_ca {
                return Err(bad_cert("it is not a CA certificate (cA=false)".into()));
            }
            (
                x509.validity().not_after.to_datetime(),
                x509.public_key().subject_public_key.data.to_vec(),
                x509.raw_serial()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>(),
            )
        };
        if key.public_key_raw() != spki.as_slice() {
            return Err(CaError::KeyMismatch { path: key_path });
        }
        let trust_domain =
            ca_trust_domain(&cert_der).ok_or(CaError::NoTrustDomain { path: cert_path })?;
        Ok(Authority {
            cert_pem,
            cert_der,
            key,
            trust_domain,
            not_after,
            serial_hex,
        })
    }

    /// The root certificate, PEM.
    pub fn root_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// The trust domain the root was made for (from its `spiffe://<td>` URI SAN).
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The root's serial number, lower-case hex.
    pub fn serial_hex(&self) -> &str {
        &self.serial_hex
    }

    /// When the root expires.
    pub fn not_after(&self) -> SystemTime {
        self.not_after.into()
    }

    /// Issues an X.509-SVID for `id` with a fresh P-256 key: empty subject with a critical SAN
    /// extension holding one URI SAN (the ID) and the `dns` names, CA:false, key usage
    /// digitalSignature + keyEncipherment (critical), EKU serverAuth + clientAuth, random
    /// positive 128-bit serial, notBefore = now − 2 min, notAfter = now + `ttl` clamped to the
    /// root's notAfter. Refuses once the root has expired.
    pub fn issue(
        &self,
        id: &SpiffeId,
        ttl: Duration,
        dns: &[String],
    ) -> Result<IssuedSvid, CaError> {
        self.issue_with_ips(id, ttl, dns, &[])
    }

    /// [`Authority::issue`] with IP address SANs too (the CA's serving certificate, for
    /// clients that dial it by address).
    pub fn issue_with_ips(
        &self,
        id: &SpiffeId,
        ttl: Duration,
        dns: &[String],
        ips: &[IpAddr],
    ) -> Result<IssuedSvid, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::Generate(e.to_string()))?;
        let leaf = self.sign_leaf(id, &key, ttl, dns, ips)?;
        Ok(IssuedSvid {
            chain_pem: leaf.pem,
            key_pem: key.serialize_pem(),
            root_pem: self.cert_pem.clone(),
            id: id.clone(),
            serial_hex: leaf.serial_hex,
            not_after: leaf.not_after,
        })
    }

    /// Signs a workload certificate for `id` over the public key of a PEM or DER certificate
    /// signing request (PKCS#10), with the same profile as [`Authority::issue`]. The CSR's
    /// signature is checked (proof that the caller holds the key); everything else in it
    /// (subject, SANs, extensions) is ignored, as Istio's CA does: the identity is the caller's.
    pub fn sign_csr(
        &self,
        csr: &[u8],
        id: &SpiffeId,
        ttl: Duration,
    ) -> Result<SignedLeaf, CaError> {
        let der = csr_der(csr)?;
        let spki = {
            use x509_parser::prelude::FromDer;
            let (rest, request) =
                x509_parser::certification_request::X509CertificationRequest::from_der(&der)
                    .map_err(|e| CaError::BadCsr(format!("it cannot be parsed: {e}")))?;
            if !rest.is_empty() {
                return Err(CaError::BadCsr("it has trailing data".into()));
            }
            request
                .verify_signature()
                .map_err(|e| CaError::BadCsr(format!("its signature does not verify: {e}")))?;
            request.certification_request_info.subject_pki.raw.to_vec()
        };
        let public_key = rcgen::SubjectPublicKeyInfo::from_der(&spki)
            .map_err(|e| CaError::BadCsr(format!("its public key is not usable: {e}")))?;
        self.sign_leaf(id, &public_key, ttl, &[], &[])
    }

    fn sign_leaf(
        &self,
        id: &SpiffeId,
        public_key: &impl rcgen::PublicKeyData,
        ttl: Duration,
        dns: &[String],
        ips: &[IpAddr],
    ) -> Result<SignedLeaf, CaError> {
        let now = OffsetDateTime::now_utc();
        if self.not_after <= now {
            return Err(CaError::RootExpired {
                not_after: self.not_after,
            });
        }
        if id.is_trust_domain_id() {
            return Err(CaError::BadName {
                field: "SPIFFE ID",
                value: id.to_string(),
                reason: "a workload certificate needs an ID with a path",
            });
        }
        let mut params = CertificateParams::default();
        // Empty subject: rcgen then marks the SAN extension critical, as SPIFFE requires.
        params.distinguished_name = DistinguishedName::new();
        let mut sans =
            vec![SanType::URI(id.to_string().try_into().map_err(
                |e: rcgen::Error| CaError::Generate(e.to_string()),
            )?)];
        for name in dns {
            let ia5 = name
                .clone()
                .try_into()
                .map_err(|_| CaError::BadDnsName(name.clone()))?;
            if !valid_dns_name(name) {
                return Err(CaError::BadDnsName(name.clone()));
            }
            sans.push(SanType::DnsName(ia5));
        }
        sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let serial = random_serial();
        let serial_hex = serial
            .to_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        params.serial_number = Some(serial);
        params.not_before = now - BACKDATE;
        params.not_after = add_ttl(now, ttl)?.min(self.not_after);
        let issuer = Issuer::from_ca_cert_der(&self.cert_der, &self.key)
            .map_err(|e| CaError::Generate(e.to_string()))?;
        let cert = params
            .signed_by(public_key, &issuer)
            .map_err(|e| CaError::Generate(e.to_string()))?;
        Ok(SignedLeaf {
            pem: cert.pem(),
            serial_hex,
            not_after: params.not_after.into(),
        })
    }

    /// Writes `cert-chain.pem`, `key.pem` (mode 0600) and `root-cert.pem` into `out` (created if
    /// missing). Each file is replaced atomically (write + rename); the key is written first and
    /// the chain last, so a watcher sees the new pair once the chain changes.
    pub fn write_svid(issued: &IssuedSvid, out: &Path) -> Result<(), CaError> {
        std::fs::create_dir_all(out).map_err(|source| CaError::CreateDir {
            path: out.to_path_buf(),
            source,
        })?;
        write_file(
            &out.join("root-cert.pem"),
            issued.root_pem.as_bytes(),
            0o644,
        )?;
        write_file(&out.join("key.pem"), issued.key_pem.as_bytes(), 0o600)?;
        write_file(
            &out.join("cert-chain.pem"),
            issued.chain_pem.as_bytes(),
            0o644,
        )?;
        Ok(())
    }
}

/// A new self-signed root for `trust_domain` (already validated): P-256 key, CA:true,
/// keyCertSign + cRLSign, URI SAN `spiffe://<trust_domain>`. Returns (certificate, key) PEM.
pub fn generate_root(trust_domain: &str, ttl: Duration) -> Result<(String, String), CaError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| CaError::Generate(e.to_string()))?;
    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "outrider");
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{trust_domain} root"));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.subject_alt_names = vec![SanType::URI(
        format!("spiffe://{trust_domain}")
            .try_into()
            .map_err(|e: rcgen::Error| CaError::Generate(e.to_string()))?,
    )];
    params.serial_number = Some(random_serial());
    params.not_before = now - BACKDATE;
    params.not_after = add_ttl(now, ttl)?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| CaError::Generate(e.to_string()))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Istio's workload identity, with errors that name the offending flag.
pub fn workload_id(
    trust_domain: &str,
    namespace: &str,
    service_account: &str,
) -> Result<SpiffeId, CaError> {
    let trust_domain =
        validate_trust_domain(trust_domain).map_err(|source| CaError::BadTrustDomain {
            domain: trust_domain.to_string(),
            source,
        })?;
    for (field, value) in [
        ("namespace", namespace),
        ("service account", service_account),
    ] {
        if let Some(reason) = segment_problem(value) {
            return Err(CaError::BadName {
                field,
                value: value.to_string(),
                reason,
            });
        }
    }
    SpiffeId::istio(&trust_domain, namespace, service_account).map_err(|e| CaError::BadName {
        field: "SPIFFE ID",
        value: e.to_string(),
        reason: "it is not a valid SPIFFE ID",
    })
}

fn segment_problem(value: &str) -> Option<&'static str> {
    if value.is_empty() {
        Some("it is empty")
    } else if value == "." || value == ".." {
        Some("'.' and '..' are not allowed")
    } else if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        Some("only letters, digits, '.', '-' and '_' are allowed")
    } else {
        None
    }
}

fn valid_dns_name(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

fn add_ttl(now: OffsetDateTime, ttl: Duration) -> Result<OffsetDateTime, CaError> {
    time::Duration::try_from(ttl)
        .ok()
        .and_then(|d| now.checked_add(d))
        .filter(|t| t.year() <= 9999)
        .ok_or_else(|| CaError::BadDuration {
            value: format!("{}s", ttl.as_secs()),
            reason: "the validity would end after the year 9999",
        })
}

/// The DER of a CSR given as PEM (`CERTIFICATE REQUEST`) or DER.
fn csr_der(csr: &[u8]) -> Result<Vec<u8>, CaError> {
    if csr.first() == Some(&0x30) {
        return Ok(csr.to_vec());
    }
    use rustls_pki_types::CertificateSigningRequestDer;
    CertificateSigningRequestDer::from_pem_slice(csr)
        .map(|der| der.as_ref().to_vec())
        .map_err(|e| CaError::BadCsr(format!("it is not a PEM CERTIFICATE REQUEST: {e}")))
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive, and exactly 16 bytes long once DER-encoded.
    bytes[0] = (bytes[0] & 0x7f).max(1);
    SerialNumber::from_slice(&bytes)
}

/// Writes `contents` to `path` atomically (temporary file + rename) with `mode`.
pub(crate) fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), CaError> {
    let err = |source| CaError::Write {
        path: path.to_path_buf(),
        source,
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    file.write_all(contents).map_err(err)?;
    file.sync_all().map_err(err)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_ids() {
        let id = workload_id("cluster.local", "default", "age").unwrap();
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/age");
        let e = workload_id("cluster.local", "Bad NS", "age")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("invalid namespace \"Bad NS\""), "{e}");
        assert!(workload_id("cluster.local", "ns", "..").is_err());
        assert!(workload_id("Cluster.local", "ns", "sa").is_err());
    }

    #[test]
    fn leaf_validity_is_clamped_to_the_root() {
        let dir = std::env::temp_dir().join(format!("outrider-ca-clamp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ca = Authority::init(&dir, "example.org", Duration::from_secs(3600), false).unwrap();
        let id = workload_id("example.org", "ns", "sa").unwrap();
        let issued = ca.issue(&id, Duration::from_secs(86_400), &[]).unwrap();
        assert!(issued.not_after <= ca.not_after());
        let loaded = Authority::load(&dir).unwrap();
        assert_eq!(loaded.trust_domain(), "example.org");
        assert_eq!(loaded.root_pem(), ca.root_pem());
        assert!(matches!(
            ca.issue(&id, Duration::from_secs(60), &["bad name!".into()]),
            Err(CaError::BadDnsName(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn serials_are_positive_and_16_bytes() {
        for _ in 0..100 {
            let s = random_serial().to_bytes();
            assert_eq!(s.len(), 16);
            assert!(s[0] >= 1 && s[0] < 0x80);
        }
    }
}
