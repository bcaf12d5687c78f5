//! Reading one server's certificate, private key and client CA from where its Gateway says:
//! file paths, or a `credentialName` directory under `--credentials-dir` laid out like a
//! mounted Kubernetes secret (SEMANTICS.md §6).
//!
//! Key names, as Istio reads a secret: `cert` and `key` when both are non-empty, else
//! `tls.crt` and `tls.key`; a pair present but empty is an error when no pair is usable. The
//! client CA comes from the `<name>-cacert` directory when it exists, else from `<name>`
//! itself: `cacert`, else `ca.crt`. Entries starting with `..` are the volume's own bookkeeping, never keys.
//!
//! A mounted secret changes by an atomic swap of its `..data` symlink; the key files are
//! symlinks through it. Reading each key through `..data` separately could pair the old
//! certificate with the new key, so when `..data` exists the keys are read from the directory
//! it resolves to, once resolved: one consistent version (or a read error if the kubelet
//! removes that version meanwhile; the caller reads again).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};

use super::{CertProblem, Settings};
use crate::config::{CaSource, CertificateSource};

/// The bytes of one file and the path the user knows it by (for errors and `/certs`).
#[derive(Debug, Clone)]
pub(super) struct File {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
}

/// Everything one server's TLS configuration is built from.
#[derive(Debug)]
pub(super) struct Material {
    pub certificate: File,
    pub private_key: File,
    /// Read only for servers that verify client certificates.
    pub ca: Option<File>,
}

impl Material {
    /// Identifies the material: equal fingerprints, same configuration.
    pub fn fingerprint(&self) -> u64 {
        let mut h = DefaultHasher::new();
        for file in [
            Some(&self.certificate),
            Some(&self.private_key),
            self.ca.as_ref(),
        ] {
            match file {
                Some(f) => (1u8, &f.path, &f.bytes).hash(&mut h),
                None => 0u8.hash(&mut h),
            }
        }
        h.finish()
    }
}

/// Reads the material `settings` names, now.
pub(super) fn read(
    settings: &Settings,
    credentials_dir: Option<&Path>,
) -> Result<Material, CertProblem> {
    let (certificate, private_key) = match &settings.certificate {
        CertificateSource::Files {
            certificate,
            private_key,
        } => (read_file(certificate)?, read_file(private_key)?),
        CertificateSource::Credential { name } => {
            key_pair(&credential_dir(credentials_dir, name, "")?)?
        }
    };
    let ca = if settings.verifies_clients() {
        Some(match &settings.ca {
            None => {
                return Err(CertProblem::MissingCa {
                    mode: settings.mode,
                })
            }
            Some(CaSource::Files {
                ca_certificates, ..
            }) => read_file(ca_certificates)?,
            Some(CaSource::Credential { name }) => {
                let own = credential_dir(credentials_dir, name, "-cacert")?;
                let dir = if own.is_dir() {
                    own
                } else {
                    credential_dir(credentials_dir, name, "")?
                };
                ca_file(&dir)?
            }
        })
    } else {
        None
    };
    Ok(Material {
        certificate,
        private_key,
        ca,
    })
}

fn read_file(path: &Path) -> Result<File, CertProblem> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(File {
            path: path.to_path_buf(),
            bytes,
        }),
        Err(source) => Err(CertProblem::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// `<credentials_dir>/<name><suffix>`, refusing names that would leave the directory.
fn credential_dir(
    credentials_dir: Option<&Path>,
    name: &str,
    suffix: &str,
) -> Result<PathBuf, CertProblem> {
    let Some(base) = credentials_dir else {
        return Err(CertProblem::NoCredentialsDir { name: name.into() });
    };
    if name.is_empty() || name.starts_with('.') || name.contains(['/', '\\']) {
        return Err(CertProblem::Credential {
            dir: base.to_path_buf(),
            reason: format!("{name:?} is not a credential name"),
        });
    }
    Ok(base.join(format!("{name}{suffix}")))
}

/// One directory of keys, read from a single version of it (see the module documentation).
struct Keys<'a> {
    dir: &'a Path,
    read_from: PathBuf,
}

impl<'a> Keys<'a> {
    fn open(dir: &'a Path) -> Result<Keys<'a>, CertProblem> {
        if !dir.is_dir() {
            return Err(CertProblem::Credential {
                dir: dir.to_path_buf(),
                reason: "no such directory".into(),
            });
        }
        let data = dir.join("..data");
        let read_from = match std::fs::canonicalize(&data) {
            Ok(resolved) => resolved,
            Err(e) if e.kind() == io::ErrorKind::NotFound => dir.to_path_buf(),
            Err(source) => return Err(CertProblem::Read { path: data, source }),
        };
        Ok(Keys { dir, read_from })
    }

    /// The key `name`: `None` when absent.
    fn get(&self, name: &str) -> Result<Option<File>, CertProblem> {
        let path = self.dir.join(name);
        match std::fs::read(self.read_from.join(name)) {
            Ok(bytes) => Ok(Some(File { path, bytes })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CertProblem::Read { path, source }),
        }
    }

    /// The names of the keys present, for an error message.
    fn listing(&self) -> String {
        let mut names: Vec<String> = std::fs::read_dir(&self.read_from)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with(".."))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        if names.is_empty() {
            "nothing".into()
        } else {
            names.join(", ")
        }
    }

    fn error(&self, reason: String) -> CertProblem {
        CertProblem::Credential {
            dir: self.dir.to_path_buf(),
            reason,
        }
    }
}

/// The certificate and key of a credential directory.
fn key_pair(dir: &Path) -> Result<(File, File), CertProblem> {
    let keys = Keys::open(dir)?;
    let mut present = Vec::new();
    for (cert, key) in [("cert", "key"), ("tls.crt", "tls.key")] {
        let (c, k) = (keys.get(cert)?, keys.get(key)?);
        match (c, k) {
            (Some(c), Some(k)) if !c.bytes.is_empty() && !k.bytes.is_empty() => return Ok((c, k)),
            (Some(_), Some(_)) => present.push((cert, key)),
            _ => {}
        }
    }
    Err(match present.first() {
        Some((cert, key)) => keys.error(format!(
            "found {cert:?} and {key:?}, but they are empty (an empty key is an error)"
        )),
        None => keys.error(format!(
            "expected \"cert\" and \"key\", or \"tls.crt\" and \"tls.key\"; found {}",
            keys.listing()
        )),
    })
}

/// The client CA of a credential directory.
fn ca_file(dir: &Path) -> Result<File, CertProblem> {
    let keys = Keys::open(dir)?;
    let mut empty = None;
    for name in ["cacert", "ca.crt"] {
        match keys.get(name)? {
            Some(file) if !file.bytes.is_empty() => return Ok(file),
            Some(_) => {
                empty.get_or_insert(name);
            }
            None => {}
        }
    }
    Err(match empty {
        Some(name) => keys.error(format!(
            "found {name:?}, but it is empty (an empty key is an error)"
        )),
        None => keys.error(format!(
            "expected \"cacert\" or \"ca.crt\" for the client CA; found {}",
            keys.listing()
        )),
    })
}
