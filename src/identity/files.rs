//! The file identity source: a directory holding Istio's `cert-chain.pem`, `key.pem` and
//! `root-cert.pem`, as written by `outrider ca issue`, cert-manager or a Kubernetes secret
//! volume.
//!
//! The directory is polled by content (no new dependency, works on every filesystem and through
//! symlinks), so the atomic `..data` symlink swap of Kubernetes secret volumes is seen like any
//! rewrite. A change is published only once the three files have been read identically twice
//! in a row, so a writer caught between two files does not count as a refused update.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::identity::{CertStore, IdentityError};

/// The certificate chain file (leaf first).
pub const CERT_CHAIN: &str = "cert-chain.pem";
/// The private key file.
pub const KEY: &str = "key.pem";
/// The trust bundle file.
pub const ROOT_CERT: &str = "root-cert.pem";

struct Material {
    chain: Vec<u8>,
    key: Vec<u8>,
    roots: Vec<u8>,
}

impl Material {
    fn read(dir: &Path) -> Result<Material, IdentityError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|source| IdentityError::Read { path, source })
        };
        Ok(Material {
            chain: read(CERT_CHAIN)?,
            key: read(KEY)?,
            roots: read(ROOT_CERT)?,
        })
    }

    fn fingerprint(&self) -> u64 {
        super::store::digest(&self.chain, &self.key, &self.roots)
    }
}

/// Reads the three files of `dir` once and publishes them to `store`.
pub fn load_dir(store: &CertStore, dir: &Path) -> Result<(), IdentityError> {
    let material = Material::read(dir)?;
    store.publish_pem(&material.chain, &material.key, &material.roots)
}

/// Watches `dir` forever: every `poll`, reads the three files and publishes them when their
/// content changed (and has settled). Refused updates are logged and counted by the store;
/// unreadable files are logged once per distinct error. Never returns, never panics.
pub async fn watch_dir(store: CertStore, dir: PathBuf, poll: Duration) {
    let mut ticker = tokio::time::interval(poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The fingerprint last handed to the store (published or refused): not retried.
    let mut attempted: Option<u64> = None;
    // The fingerprint seen on the previous tick: a change must be seen twice to count.
    let mut previous: Option<u64> = None;
    let mut last_read_error: Option<String> = None;
    loop {
        ticker.tick().await;
        let read_dir = dir.clone();
        let material = match tokio::task::spawn_blocking(move || Material::read(&read_dir)).await {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                let text = e.to_string();
                if last_read_error.as_ref() != Some(&text) {
                    tracing::warn!(dir = %dir.display(), error = %text, "cannot read identity files; keeping the current identity");
                    last_read_error = Some(text);
                }
                previous = None;
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "identity file reader task failed");
                continue;
            }
        };
        last_read_error = None;
        let fp = material.fingerprint();
        let settled = previous == Some(fp) || (attempted.is_none() && store.current().is_none());
        previous = Some(fp);
        if attempted == Some(fp) || !settled {
            continue;
        }
        attempted = Some(fp);
        if let Err(e) = store.publish_pem(&material.chain, &material.key, &material.roots) {
            tracing::debug!(dir = %dir.display(), error = %e, "identity files changed but were refused");
        }
    }
}
