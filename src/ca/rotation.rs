//! The CA directory as the CA service reads it, and root rotation without downtime.
//!
//! Files (next to `root-cert.pem` / `root-key.pem`, the signing root):
//! - `trust-bundle.pem`: every root the CA hands out in each response (absent ⇒ the signing
//!   root alone). Workloads replace their trust bundle with it on every renewal.
//! - `next-root-cert.pem` / `next-root-key.pem`: a root introduced but not signing yet.
//! - `previous-root-cert.pem`: the root that signed before the last switch, still trusted.
//! - `issued-until-<root serial>`: the latest notAfter (Unix seconds) of a leaf that root
//!   signed, kept by the service so retiring a root can wait for its last leaf to expire.
//!
//! Rotation (Istio's zero-downtime root swap: publish old + new roots, sign with the new, drop the old), one `outrider ca rotate-root`
//! step at a time, with the service running (it rereads the directory every second):
//! 1. `--step prepare`: a new root is generated and added to the bundle; signing is
//!    unchanged. Wait at least one renewal interval (half a workload TTL) so every workload
//!    trusts both roots.
//! 2. `--step activate`: the new root signs from now on; the old one stays in the bundle.
//!    Workloads turn over to new leaves within one renewal interval.
//! 3. `--step retire`: the old root leaves the bundle; refused while a leaf it signed is still
//!    valid (`--force` overrides).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::ca::token::unix_now;
use crate::ca::{generate_root, write_file, Authority, CaError, ROOT_CERT, ROOT_KEY};

/// Every root the CA hands out.
pub const TRUST_BUNDLE: &str = "trust-bundle.pem";
/// A root introduced by `rotate-root --step prepare`, not signing yet.
pub const NEXT_ROOT_CERT: &str = "next-root-cert.pem";
/// The key of [`NEXT_ROOT_CERT`].
pub const NEXT_ROOT_KEY: &str = "next-root-key.pem";
/// The root that signed before the last `activate`.
pub const PREVIOUS_ROOT_CERT: &str = "previous-root-cert.pem";

/// What the CA service serves from: the signing root and the bundle it hands out.
pub struct Material {
    pub authority: Authority,
    /// Every trusted root, PEM, the signing root included.
    pub bundle_pem: String,
    /// A digest of the files this was read from (to notice changes).
    pub fingerprint: u64,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material")
            .field("authority", &self.authority)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// A digest of the files that make up [`Material`]; cheap enough to poll every second.
pub fn fingerprint(dir: &Path) -> u64 {
    let mut h = DefaultHasher::new();
    for name in [ROOT_CERT, ROOT_KEY, TRUST_BUNDLE] {
        std::fs::read(dir.join(name)).ok().hash(&mut h);
    }
    h.finish()
}

/// Loads the signing root and the bundle of `dir`. The bundle must contain the signing root.
pub fn load_material(dir: &Path) -> Result<Material, CaError> {
    let fingerprint = fingerprint(dir);
    let authority = Authority::load(dir)?;
    let bundle_path = dir.join(TRUST_BUNDLE);
    let bundle_pem = match std::fs::read_to_string(&bundle_path) {
        Ok(pem) => pem,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => authority.root_pem(),
        Err(source) => {
            return Err(CaError::ReadCert {
                path: bundle_path,
                source,
            })
        }
    };
    let roots = certs(&bundle_pem, &bundle_path)?;
    let signing = certs(&authority.root_pem(), &dir.join(ROOT_CERT))?;
    if !signing.iter().all(|c| roots.contains(c)) {
        return Err(CaError::BadCert {
            path: bundle_path,
            detail: "it does not contain the signing root root-cert.pem".into(),
        });
    }
    Ok(Material {
        authority,
        bundle_pem: normalize(&roots),
        fingerprint,
    })
}

/// Removes the rotation files (`ca init --force` starts over).
pub fn reset(dir: &Path) {
    for name in [
        TRUST_BUNDLE,
        NEXT_ROOT_CERT,
        NEXT_ROOT_KEY,
        PREVIOUS_ROOT_CERT,
    ] {
        let _ = std::fs::remove_file(dir.join(name));
    }
}

/// Step 1: a new root, added to the bundle (newest first), not signing yet.
pub fn prepare(dir: &Path, ttl: Duration) -> Result<String, CaError> {
    let current = load_material(dir)?;
    if dir.join(NEXT_ROOT_CERT).exists() {
        return Err(rotation_error(
            dir,
            "a new root is already prepared; run --step activate",
        ));
    }
    let (cert_pem, key_pem) = generate_root(current.authority.trust_domain(), ttl)?;
    write_file(&dir.join(NEXT_ROOT_KEY), key_pem.as_bytes(), 0o600)?;
    write_file(&dir.join(NEXT_ROOT_CERT), cert_pem.as_bytes(), 0o644)?;
    let next = Authority::load_pair(&dir.join(NEXT_ROOT_CERT), &dir.join(NEXT_ROOT_KEY))?;
    let bundle = format!("{}{}", cert_pem, current.bundle_pem);
    write_file(&dir.join(TRUST_BUNDLE), bundle.as_bytes(), 0o644)?;
    Ok(format!(
        "prepared root {} (bundle now {} roots); it signs after --step activate",
        next.serial_hex(),
        bundle.matches("BEGIN CERTIFICATE").count()
    ))
}

/// Step 2: the prepared root signs from now on; the old one stays trusted.
pub fn activate(dir: &Path) -> Result<String, CaError> {
    let current = load_material(dir)?;
    let next = Authority::load_pair(&dir.join(NEXT_ROOT_CERT), &dir.join(NEXT_ROOT_KEY))
        .map_err(|e| rotation_error(dir, &format!("no usable prepared root: {e}")))?;
    if dir.join(PREVIOUS_ROOT_CERT).exists() {
        return Err(rotation_error(
            dir,
            "the previous root is still in the bundle; run --step retire first",
        ));
    }
    // Keep the old root's certificate (it is still trusted); its key never signs again.
    write_file(
        &dir.join(PREVIOUS_ROOT_CERT),
        current.authority.root_pem().as_bytes(),
        0o644,
    )?;
    // Key first, certificate last: the service notices the pair once both match.
    rename(&dir.join(NEXT_ROOT_KEY), &dir.join(ROOT_KEY))?;
    rename(&dir.join(NEXT_ROOT_CERT), &dir.join(ROOT_CERT))?;
    Ok(format!(
        "root {} signs now; root {} stays trusted until --step retire",
        next.serial_hex(),
        current.authority.serial_hex()
    ))
}

/// Step 3: the previous root leaves the bundle, once no leaf it signed is still valid.
pub fn retire(dir: &Path, force: bool) -> Result<String, CaError> {
    let current = load_material(dir)?;
    let previous_path = dir.join(PREVIOUS_ROOT_CERT);
    let previous_pem = std::fs::read_to_string(&previous_path)
        .map_err(|_| rotation_error(dir, "there is no previous root to retire"))?;
    let previous = certs(&previous_pem, &previous_path)?;
    let serial = serial_hex(&previous[0]).unwrap_or_default();
    let until = issued_until(dir, &serial);
    let now = unix_now();
    if until > now && !force {
        return Err(rotation_error(
            dir,
            &format!(
                "a leaf signed by root {serial} is valid for {} more seconds; retry later or pass --force",
                until - now
            ),
        ));
    }
    let kept: Vec<_> = certs(&current.bundle_pem, &dir.join(TRUST_BUNDLE))?
        .into_iter()
        .filter(|c| !previous.contains(c))
        .collect();
    write_file(&dir.join(TRUST_BUNDLE), normalize(&kept).as_bytes(), 0o644)?;
    std::fs::remove_file(&previous_path).map_err(|source| CaError::Write {
        path: previous_path,
        source,
    })?;
    Ok(format!(
        "retired root {serial}; the bundle holds {} root(s)",
        kept.len()
    ))
}

/// The recorded latest notAfter (Unix seconds) of leaves signed by the root `serial`.
pub fn issued_until(dir: &Path, serial: &str) -> u64 {
    std::fs::read_to_string(dir.join(format!("issued-until-{serial}")))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Records that a leaf signed by root `serial` is valid until `not_after` (Unix seconds).
pub fn record_issued_until(dir: &Path, serial: &str, not_after: u64) -> Result<(), CaError> {
    write_file(
        &dir.join(format!("issued-until-{serial}")),
        not_after.to_string().as_bytes(),
        0o644,
    )
}

fn certs(pem: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CaError::BadCert {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CaError::BadCert {
            path: path.to_path_buf(),
            detail: "it holds no certificate".into(),
        });
    }
    Ok(certs)
}

fn normalize(certs: &[CertificateDer<'_>]) -> String {
    certs
        .iter()
        .map(|c| pem_cert(c.as_ref()))
        .collect::<Vec<_>>()
        .join("")
}

/// One DER certificate as PEM.
pub(crate) fn pem_cert(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

fn serial_hex(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some(
        x509.raw_serial()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

fn rename(from: &Path, to: &Path) -> Result<(), CaError> {
    std::fs::rename(from, to).map_err(|source| CaError::Write {
        path: to.to_path_buf(),
        source,
    })
}

fn rotation_error(dir: &Path, detail: &str) -> CaError {
    CaError::Rotation {
        dir: dir.to_path_buf(),
        detail: detail.to_string(),
    }
}
