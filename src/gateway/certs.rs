//! The ingress gateway's edge TLS material at run time: one rustls server configuration per
//! Gateway server that terminates TLS with the user's own certificate (SIMPLE, MUTUAL,
//! OPTIONAL_MUTUAL), reloaded when its files change, listed on `/certs`.
//!
//! - [`EdgeCertificates::load`] reads every such server's certificate, key and client CA
//!   (file paths, or a `credentialName` directory under `--credentials-dir`, see the
//!   `source` module) and builds its configuration (`build`); any failure names the server, its
//!   port and the file, and nothing starts.
//! - The data path asks [`EdgeCertificates::server_config`] per handshake: a read lock and an
//!   `Arc` clone.
//! - [`EdgeCertificates::refresh`] (run every `--cert-poll` by [`EdgeCertificates::watch`])
//!   reads every source again and rebuilds the configurations whose bytes changed. Changes are
//!   found by content, never by modification time, so a rewrite within the same second, a
//!   file moved into place and the `..data` symlink swap of a mounted secret all count. A
//!   replacement that does not build (unparsable, a key of another certificate, a file missing
//!   halfway through a swap) leaves the served configuration alone, is logged with the server
//!   and the file, and is counted once (`outrider_gateway_certificate_reloads_total{result=
//!   "failed"}`), not again on every poll while the same bytes stay.
//! - [`EdgeCertificates::update`] follows a configuration reload: servers whose TLS settings
//!   did not change keep their configuration; new ones are loaded, all or nothing.
//!
//! A rebuilt configuration gets a new session ticket key and session cache: a session
//! resumes only on the configuration that verified its client, so a client certificate
//! accepted under a CA since replaced cannot resume past the change. Established connections
//! keep what they negotiated.

mod build;
mod source;

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls_pki_types::CertificateDer;
use tokio::sync::watch;

use crate::config::{
    CaSource, CertificateSource, GatewayPlan, GatewayServer, ServerTlsMode, TlsVersion,
};
use crate::metrics::Metrics;
use crate::tls::edge::EdgeTlsError;
use build::Settings;

pub use crate::tls::edge::{handshake_outcome, rustls_outcome};
pub use build::{HTTP_ALPN, SESSION_CACHE_SIZE};

/// A gateway server's TLS material could not be used: which server, and why.
#[derive(Debug, thiserror::Error)]
#[error("gateway server {server:?} (port {port}): {problem}")]
pub struct EdgeCertError {
    /// `GatewayServer::name`.
    pub server: String,
    pub port: u16,
    pub problem: CertProblem,
}

/// What was wrong with one server's TLS material or settings.
#[derive(Debug, thiserror::Error)]
pub enum CertProblem {
    /// `credentialName` is used but no credentials directory was given.
    #[error(
        "credentialName {name:?} needs a credentials directory: pass --credentials-dir \
         (or set OUTRIDER_CREDENTIALS_DIR)"
    )]
    NoCredentialsDir { name: String },
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A credential directory lacks the keys SEMANTICS §6 names, or has them empty.
    #[error("credential directory {}: {reason}", dir.display())]
    Credential { dir: PathBuf, reason: String },
    /// A file's content is not usable (not PEM, not X.509, an unsupported key).
    #[error("{}: {source}", file.display())]
    Material {
        file: PathBuf,
        #[source]
        source: Box<EdgeTlsError>,
    },
    /// The private key belongs to another certificate.
    #[error(
        "the private key {} does not belong to the certificate {} (their public keys differ)",
        private_key.display(),
        certificate.display()
    )]
    KeyMismatch {
        certificate: PathBuf,
        private_key: PathBuf,
    },
    /// A terminating mode without a certificate.
    #[error("tls mode {mode:?} needs serverCertificate and privateKey, or credentialName")]
    MissingCertificate { mode: ServerTlsMode },
    /// MUTUAL or OPTIONAL_MUTUAL without a client CA.
    #[error("tls mode {mode:?} needs caCertificates, or credentialName")]
    MissingCa { mode: ServerTlsMode },
    /// `minProtocolVersion` above `maxProtocolVersion`.
    #[error("minProtocolVersion {min:?} is above maxProtocolVersion {max:?}")]
    VersionRange { min: TlsVersion, max: TlsVersion },
    /// `cipherSuites` leaves no usable TLS 1.2 suite.
    #[error(transparent)]
    CipherSuites(Box<EdgeTlsError>),
    /// rustls refused the combination of versions and suites.
    #[error("TLS settings: {0}")]
    Rustls(rustls::Error),
}

/// The edge TLS configurations of a gateway, shared by its listeners (cheap to clone).
#[derive(Clone)]
pub struct EdgeCertificates {
    inner: Arc<Inner>,
}

struct Inner {
    credentials_dir: Option<PathBuf>,
    metrics: Arc<Metrics>,
    /// Keyed by (port, index in `GatewayPortPlan::servers`).
    served: RwLock<HashMap<(u16, usize), Arc<Served>>>,
    /// Held by `refresh` and `update` for their whole run: one writer at a time, while
    /// handshakes only ever take the read lock of `served`, briefly.
    writer: Mutex<()>,
}

/// One server's configuration and what it was built from.
#[derive(Clone)]
struct Served {
    port: u16,
    name: String,
    settings: Settings,
    /// Of the material `config` was built from.
    fingerprint: u64,
    /// What the last refused replacement looked like (its material's fingerprint, or its read
    /// error), so the same broken bytes are reported once.
    refused: Option<u64>,
    config: Arc<ServerConfig>,
    certificate_file: PathBuf,
    private_key_file: PathBuf,
    ca_file: Option<PathBuf>,
    chain: Vec<CertificateDer<'static>>,
    ca: Vec<CertificateDer<'static>>,
    not_after: i64,
}

impl EdgeCertificates {
    /// Loads every SIMPLE, MUTUAL and OPTIONAL_MUTUAL server of `plan`. `credentials_dir` is
    /// `--credentials-dir` (needed only when a server uses `credentialName`).
    pub fn load(
        plan: &GatewayPlan,
        credentials_dir: Option<&Path>,
        metrics: Arc<Metrics>,
    ) -> Result<EdgeCertificates, EdgeCertError> {
        let certs = EdgeCertificates {
            inner: Arc::new(Inner {
                credentials_dir: credentials_dir.map(Path::to_path_buf),
                metrics,
                served: RwLock::new(HashMap::new()),
                writer: Mutex::new(()),
            }),
        };
        certs.update(plan)?;
        Ok(certs)
    }

    /// The configuration of server `server` (its index in `GatewayPortPlan::servers`) of
    /// `port`; `None` when that server does not terminate TLS with its own certificate
    /// (plaintext, PASSTHROUGH, ISTIO_MUTUAL) or does not exist.
    pub fn server_config(&self, port: u16, server: usize) -> Option<Arc<ServerConfig>> {
        self.inner
            .served
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(port, server))
            .map(|s| s.config.clone())
    }

    /// Switches to the servers of `plan` (after a configuration reload). A server whose TLS
    /// settings equal those of a server served now keeps that configuration (its files are
    /// watched by [`EdgeCertificates::refresh`] anyway); the others are loaded now. If any
    /// fails, nothing changes and the error names it.
    pub fn update(&self, plan: &GatewayPlan) -> Result<(), EdgeCertError> {
        let _writer = self.inner.writer.lock().unwrap_or_else(|p| p.into_inner());
        let old: Vec<Arc<Served>> = self.snapshot();
        let mut next = HashMap::new();
        for port in &plan.ports {
            for (index, server) in port.servers.iter().enumerate() {
                let fail = |problem| EdgeCertError {
                    server: server.name.clone(),
                    port: port.port,
                    problem,
                };
                let Some(settings) = Settings::of(server).map_err(fail)? else {
                    continue;
                };
                let reused = old
                    .iter()
                    .find(|s| {
                        s.port == port.port && s.name == server.name && s.settings == settings
                    })
                    .or_else(|| old.iter().find(|s| s.settings == settings));
                let served = match reused {
                    Some(s) => Served {
                        port: port.port,
                        name: server.name.clone(),
                        ..Served::clone(s)
                    },
                    None => self
                        .load_server(port.port, server, settings)
                        .map_err(fail)?,
                };
                next.insert((port.port, index), Arc::new(served));
            }
        }
        let metrics = &self.inner.metrics;
        for gone in old
            .iter()
            .filter(|s| !next.values().any(|n| n.name == s.name))
        {
            metrics.gateway_forget_server(&gone.name);
        }
        for served in next.values() {
            metrics.gateway_certificate_expiry(&served.name, served.not_after);
        }
        tracing::debug!(servers = next.len(), "edge TLS servers updated");
        *self.inner.served.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }

    fn load_server(
        &self,
        port: u16,
        server: &GatewayServer,
        settings: Settings,
    ) -> Result<Served, CertProblem> {
        let material = source::read(&settings, self.inner.credentials_dir.as_deref())?;
        let built = build::build(&settings, &material)?;
        let served = Served::new(port, server.name.clone(), settings, &material, built);
        served.log_loaded("edge certificate loaded");
        Ok(served)
    }

    /// Reads every server's files again and rebuilds the configurations whose material
    /// changed; see the module documentation for what a refused replacement does. Blocking
    /// file I/O: call it off the runtime's worker threads ([`EdgeCertificates::watch`] does).
    pub fn refresh(&self) {
        let _writer = self.inner.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut replaced = Vec::new();
        for ((port, index), served) in self.snapshot_keyed() {
            if let Some(next) = self.refresh_one(&served) {
                replaced.push(((port, index), Arc::new(next)));
            }
        }
        let metrics = &self.inner.metrics;
        let mut map = self.inner.served.write().unwrap_or_else(|p| p.into_inner());
        for (key, served) in replaced {
            map.insert(key, served);
        }
        for served in map.values() {
            metrics.gateway_certificate_expiry(&served.name, served.not_after);
        }
    }

    /// The server's next state, if it changes.
    fn refresh_one(&self, served: &Served) -> Option<Served> {
        let dir = self.inner.credentials_dir.as_deref();
        let read = || {
            let material = source::read(&served.settings, dir);
            let seen = match &material {
                Ok(m) => m.fingerprint(),
                Err(e) => error_fingerprint(e),
            };
            (material, seen)
        };
        let (first, seen) = read();
        if seen == served.fingerprint {
            // Unchanged (or back to what is served after a refused replacement).
            return served.refused.map(|_| Served {
                refused: None,
                ..served.clone()
            });
        }
        if served.refused == Some(seen) {
            return None;
        }
        let attempt = |material: Result<source::Material, CertProblem>| {
            material.and_then(|m| build::build(&served.settings, &m).map(|built| (m, built)))
        };
        let (result, seen) = match attempt(first) {
            Ok(done) => (Ok(done), seen),
            // A writer may be between two files (the certificate renamed into place, the key
            // not yet): look once more before calling the replacement broken.
            Err(problem) => match read() {
                (_, again) if again == seen => (Err(problem), seen),
                (_, again) if again == served.fingerprint || Some(again) == served.refused => {
                    return None
                }
                (material, again) => (attempt(material), again),
            },
        };
        let metrics = &self.inner.metrics;
        match result {
            Ok((material, built)) => {
                metrics.gateway_certificate_reload(&served.name, true);
                let next = Served::new(
                    served.port,
                    served.name.clone(),
                    served.settings.clone(),
                    &material,
                    built,
                );
                next.log_loaded("edge certificate reloaded; new handshakes get it");
                Some(next)
            }
            Err(problem) => {
                metrics.gateway_certificate_reload(&served.name, false);
                tracing::warn!(
                    server = %served.name,
                    port = served.port,
                    error = %problem,
                    "edge certificate replacement refused; still serving the previous one"
                );
                Some(Served {
                    refused: Some(seen),
                    ..served.clone()
                })
            }
        }
    }

    /// Calls [`EdgeCertificates::refresh`] every `poll` until `stop` turns true (or its
    /// sender is dropped). The first refresh is one `poll` after the call: `load` has just
    /// read everything.
    pub async fn watch(self, poll: Duration, mut stop: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(poll);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = crate::shutdown::draining(&mut stop) => return,
            }
            let certs = self.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || certs.refresh()).await {
                tracing::warn!(error = %e, "edge certificate refresh task failed");
            }
        }
    }

    /// The `/certs` listing of the edge (the value of its `edge` member): one object per
    /// terminating server, in port and server order, with the served leaf (`subject`, `sans`,
    /// `issuer`, `serial`, `not_before`, `not_after`, `not_after_unix`), the rest of the
    /// served chain (`chain`) and the client CA certificates (`ca`, MUTUAL and
    /// OPTIONAL_MUTUAL).
    pub fn describe(&self) -> serde_json::Value {
        let mut all: BTreeMap<(u16, usize), Arc<Served>> = BTreeMap::new();
        all.extend(self.snapshot_keyed());
        all.values()
            .map(|s| s.describe())
            .collect::<Vec<_>>()
            .into()
    }

    fn snapshot(&self) -> Vec<Arc<Served>> {
        self.snapshot_keyed().into_iter().map(|(_, s)| s).collect()
    }

    fn snapshot_keyed(&self) -> Vec<((u16, usize), Arc<Served>)> {
        self.inner
            .served
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect()
    }
}

impl std::fmt::Debug for EdgeCertificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut servers: Vec<(u16, String)> = self
            .snapshot()
            .iter()
            .map(|s| (s.port, s.name.clone()))
            .collect();
        servers.sort();
        f.debug_struct("EdgeCertificates")
            .field("servers", &servers)
            .finish_non_exhaustive()
    }
}

/// Identifies a read that failed the same way as an earlier one.
fn error_fingerprint(e: &CertProblem) -> u64 {
    let mut h = DefaultHasher::new();
    e.to_string().hash(&mut h);
    h.finish()
}

impl Served {
    fn new(
        port: u16,
        name: String,
        settings: Settings,
        material: &source::Material,
        built: build::Built,
    ) -> Served {
        Served {
            port,
            name,
            settings,
            fingerprint: material.fingerprint(),
            refused: None,
            config: built.config,
            certificate_file: material.certificate.path.clone(),
            private_key_file: material.private_key.path.clone(),
            ca_file: material.ca.as_ref().map(|f| f.path.clone()),
            chain: built.chain,
            ca: built.ca,
            not_after: built.not_after,
        }
    }

    /// The served leaf, described (the chain is never empty: `certified_key` refuses that).
    fn leaf(&self) -> serde_json::Value {
        self.chain
            .first()
            .map(describe_certificate)
            .unwrap_or_default()
    }

    fn log_loaded(&self, message: &str) {
        let leaf = self.leaf();
        let expired = self.not_after < unix_now();
        if expired {
            tracing::warn!(
                server = %self.name,
                port = self.port,
                file = %self.certificate_file.display(),
                not_after = %leaf["not_after"].as_str().unwrap_or_default(),
                "the edge certificate has expired; clients will refuse it"
            );
        }
        tracing::info!(
            server = %self.name,
            port = self.port,
            file = %self.certificate_file.display(),
            subject = %leaf["subject"].as_str().unwrap_or_default(),
            not_after = %leaf["not_after"].as_str().unwrap_or_default(),
            "{message}"
        );
    }

    fn describe(&self) -> serde_json::Value {
        let mut entry = self.leaf();
        let source = match &self.settings.certificate {
            CertificateSource::Files { .. } => "serverCertificate".to_string(),
            CertificateSource::Credential { name } => format!("credentialName {name}"),
        };
        let ca_source = self.settings.ca.as_ref().map(|ca| match ca {
            CaSource::Files { .. } => "caCertificates".to_string(),
            CaSource::Credential { name } => format!("credentialName {name}"),
        });
        let fields = serde_json::json!({
            "port": self.port,
            "server": self.name,
            "mode": self.settings.mode,
            "source": source,
            "certificate_file": self.certificate_file,
            "private_key_file": self.private_key_file,
            "not_after_unix": self.not_after,
            "chain": self.chain.iter().skip(1).map(describe_certificate).collect::<Vec<_>>(),
            "ca_source": ca_source,
            "ca_file": self.ca_file,
            "ca": self.ca.iter().map(describe_certificate).collect::<Vec<_>>(),
        });
        if let (Some(entry), serde_json::Value::Object(fields)) = (entry.as_object_mut(), fields) {
            entry.extend(fields);
        }
        entry
    }
}

/// Subject, SANs, issuer, serial and validity of one certificate.
fn describe_certificate(der: &CertificateDer<'_>) -> serde_json::Value {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
        return serde_json::json!({ "error": "not an X.509 certificate" });
    };
    let sans: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::DNSName(s) | GeneralName::URI(s) | GeneralName::RFC822Name(s) => {
                    Some(s.to_string())
                }
                GeneralName::IPAddress(ip) => match ip.len() {
                    4 => <[u8; 4]>::try_from(*ip)
                        .ok()
                        .map(|b| std::net::IpAddr::from(b).to_string()),
                    16 => <[u8; 16]>::try_from(*ip)
                        .ok()
                        .map(|b| std::net::IpAddr::from(b).to_string()),
                    _ => None,
                },
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let validity = cert.validity();
    serde_json::json!({
        "subject": cert.subject().to_string(),
        "sans": sans,
        "issuer": cert.issuer().to_string(),
        "serial": cert.raw_serial_as_string().replace(':', ""),
        "version": cert.version().0 + 1,
        "not_before": validity.not_before.to_rfc2822().unwrap_or_default(),
        "not_after": validity.not_after.to_rfc2822().unwrap_or_default(),
    })
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::os::unix::fs::symlink;

    use prometheus::Registry;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType, PKCS_ECDSA_P256_SHA256,
    };
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::ServerName;
    use rustls::{
        CipherSuite, ClientConfig, HandshakeKind, ProtocolVersion, RootCertStore,
        SupportedCipherSuite, SupportedProtocolVersion,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use crate::config::{GatewayPortPlan, GatewayProtocol, ServerTls};
    use crate::policy::authz::Authorizer;
    use crate::policy::jwt::Authenticator;

    const HOST: &str = "sentences.example.com";
    const PORT: u16 = 8443;

    // ---- certificates ------------------------------------------------------------------

    struct Ca {
        cert: rcgen::Certificate,
        key: KeyPair,
    }

    /// A certificate and key in PEM.
    #[derive(Clone)]
    struct Pem {
        cert: String,
        key: String,
    }

    fn params(cn: &str, days: (i64, i64)) -> CertificateParams {
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, cn);
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now + time::Duration::days(days.0);
        p.not_after = now + time::Duration::days(days.1);
        p
    }

    fn ca(cn: &str) -> Ca {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = params(cn, (-1, 365));
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = p.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    impl Ca {
        fn pem(&self) -> String {
            self.cert.pem()
        }

        fn issue(&self, cn: &str, dns: &[&str], days: (i64, i64)) -> Pem {
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
            let mut p = params(cn, days);
            p.subject_alt_names = dns
                .iter()
                .map(|d| SanType::DnsName((*d).try_into().unwrap()))
                .collect();
            let issuer = rcgen::Issuer::from_ca_cert_der(self.cert.der(), &self.key).unwrap();
            let cert = p.signed_by(&key, &issuer).unwrap();
            Pem {
                cert: cert.pem(),
                key: key.serialize_pem(),
            }
        }

        fn server(&self, cn: &str) -> Pem {
            self.issue(cn, &[HOST], (-1, 30))
        }
    }

    fn der_of(pem: &str) -> Vec<u8> {
        crate::tls::edge::parse_certificates(pem.as_bytes(), "test")
            .unwrap()
            .remove(0)
            .to_vec()
    }

    /// Writes `contents` to `path` by a rename, as careful tools replace files.
    fn replace(path: &Path, contents: &str) {
        let tmp = path.with_extension("tmp-write");
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    // ---- plans -------------------------------------------------------------------------

    fn tls(
        mode: ServerTlsMode,
        certificate: Option<CertificateSource>,
        ca: Option<CaSource>,
    ) -> ServerTls {
        ServerTls {
            mode,
            certificate,
            ca_certificates: ca,
            subject_alt_names: Vec::new(),
            min_protocol_version: TlsVersion::Tls12,
            max_protocol_version: TlsVersion::Tls13,
            cipher_suites: Vec::new(),
        }
    }

    fn server(name: &str, protocol: GatewayProtocol, tls: Option<ServerTls>) -> GatewayServer {
        GatewayServer {
            gateway: "default/sentences-gateway".into(),
            name: name.into(),
            protocol,
            hosts: vec![HOST.into()],
            tls,
            https_redirect: false,
            http: Vec::new(),
            tls_routes: Vec::new(),
            tcp: Vec::new(),
        }
    }

    fn https(name: &str, tls: ServerTls) -> GatewayServer {
        server(name, GatewayProtocol::Https, Some(tls))
    }

    fn plan(ports: Vec<(u16, Vec<GatewayServer>)>) -> GatewayPlan {
        GatewayPlan {
            ports: ports
                .into_iter()
                .map(|(port, servers)| GatewayPortPlan {
                    port,
                    servers,
                    authorization: Arc::new(Authorizer::default()),
                    authentication: Arc::new(Authenticator::default()),
                })
                .collect(),
        }
    }

    fn one(server: GatewayServer) -> GatewayPlan {
        plan(vec![(PORT, vec![server])])
    }

    fn files(dir: &Path, name: &str) -> CertificateSource {
        CertificateSource::Files {
            certificate: dir.join(format!("{name}.crt")),
            private_key: dir.join(format!("{name}.key")),
        }
    }

    fn ca_files(path: PathBuf) -> CaSource {
        CaSource::Files {
            ca_certificates: path,
            ca_crl: None,
        }
    }

    fn credential(name: &str) -> CertificateSource {
        CertificateSource::Credential { name: name.into() }
    }

    fn ca_credential(name: &str) -> CaSource {
        CaSource::Credential { name: name.into() }
    }

    /// A scratch directory with `<name>.crt` / `<name>.key` written by [`Scratch::put`].
    struct Scratch {
        dir: tempfile::TempDir,
    }

    impl Scratch {
        fn new() -> Scratch {
            Scratch {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn path(&self) -> &Path {
            self.dir.path()
        }

        fn put(&self, name: &str, pem: &Pem) {
            replace(&self.path().join(format!("{name}.crt")), &pem.cert);
            replace(&self.path().join(format!("{name}.key")), &pem.key);
        }

        fn put_ca(&self, name: &str, pem: &str) -> PathBuf {
            let path = self.path().join(name);
            replace(&path, pem);
            path
        }

        /// A credential directory `<name>/` with the given keys.
        fn credential(&self, name: &str, keys: &[(&str, &str)]) -> PathBuf {
            let dir = self.path().join(name);
            std::fs::create_dir_all(&dir).unwrap();
            for (key, contents) in keys {
                replace(&dir.join(key), contents);
            }
            dir
        }
    }

    fn metrics() -> Arc<Metrics> {
        Arc::new(Metrics::new(Registry::new()))
    }

    /// The value of the series of `name` carrying every label of `labels` (0 when absent).
    fn metric(m: &Metrics, name: &str, labels: &[(&str, &str)]) -> f64 {
        m.encode()
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .filter(|l| {
                labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    // ---- handshakes --------------------------------------------------------------------

    struct Client {
        roots: Vec<Vec<u8>>,
        cert: Option<Pem>,
        versions: Vec<&'static SupportedProtocolVersion>,
        suites: Option<Vec<SupportedCipherSuite>>,
    }

    impl Client {
        fn trusting(ca: &Ca) -> Client {
            Client {
                roots: vec![ca.cert.der().to_vec()],
                cert: None,
                versions: vec![&rustls::version::TLS13, &rustls::version::TLS12],
                suites: None,
            }
        }

        fn with_cert(mut self, pem: &Pem) -> Client {
            self.cert = Some(pem.clone());
            self
        }

        fn tls12(mut self, suites: &[SupportedCipherSuite]) -> Client {
            self.versions = vec![&rustls::version::TLS12];
            if !suites.is_empty() {
                self.suites = Some(suites.to_vec());
            }
            self
        }

        fn config(&self) -> Arc<ClientConfig> {
            let mut provider = rustls::crypto::aws_lc_rs::default_provider();
            if let Some(suites) = &self.suites {
                provider.cipher_suites = suites.clone();
            }
            let mut roots = RootCertStore::empty();
            for der in &self.roots {
                roots.add(CertificateDer::from(der.clone())).unwrap();
            }
            let builder = ClientConfig::builder_with_provider(Arc::new(provider))
                .with_protocol_versions(&self.versions)
                .unwrap()
                .with_root_certificates(roots);
            let mut config = match &self.cert {
                Some(pem) => builder
                    .with_client_auth_cert(
                        crate::tls::edge::parse_certificates(pem.cert.as_bytes(), "test").unwrap(),
                        rustls::pki_types::PrivateKeyDer::from_pem_slice(pem.key.as_bytes())
                            .unwrap(),
                    )
                    .unwrap(),
                None => builder.with_no_client_auth(),
            };
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            Arc::new(config)
        }
    }

    /// What the server saw: whether the client presented a certificate and whether the
    /// session was resumed, or the failure's outcome label.
    #[derive(Debug, PartialEq)]
    struct Accepted {
        client_cert: bool,
        resumed: bool,
    }

    /// What the client saw of a completed handshake.
    #[derive(Debug)]
    struct Connected {
        leaf: Vec<u8>,
        alpn: Option<Vec<u8>>,
        suite: CipherSuite,
        version: ProtocolVersion,
    }

    async fn handshake(
        config: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
    ) -> (Result<Accepted, &'static str>, Option<Connected>) {
        let (c, s) = tokio::io::duplex(64 * 1024);
        let server = async move {
            match TlsAcceptor::from(config).accept(s).await {
                Ok(mut tls) => {
                    let conn = tls.get_ref().1;
                    let accepted = Accepted {
                        client_cert: conn.peer_certificates().is_some(),
                        resumed: conn.handshake_kind() == Some(HandshakeKind::Resumed),
                    };
                    let _ = tls.write_all(b"x").await;
                    let _ = tls.flush().await;
                    let mut buf = [0u8; 1];
                    let _ = tls.read(&mut buf).await;
                    Ok(accepted)
                }
                Err(e) => Err(handshake_outcome(&e)),
            }
        };
        let client = async move {
            let name = ServerName::try_from(HOST).unwrap();
            let mut tls = TlsConnector::from(client).connect(name, c).await.ok()?;
            let mut buf = [0u8; 1];
            tls.read_exact(&mut buf).await.ok()?;
            let conn = tls.get_ref().1;
            Some(Connected {
                leaf: conn.peer_certificates()?[0].to_vec(),
                alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
                suite: conn.negotiated_cipher_suite()?.suite(),
                version: conn.protocol_version()?,
            })
        };
        tokio::time::timeout(Duration::from_secs(20), async {
            tokio::join!(server, client)
        })
        .await
        .expect("the handshake ended")
    }

    async fn serves(certs: &EdgeCertificates, client: &Client) -> Connected {
        let config = certs.server_config(PORT, 0).expect("a terminating server");
        let (server, client) = handshake(config, client.config()).await;
        server.expect("the server accepted");
        client.expect("the client connected")
    }

    // ---- loading -----------------------------------------------------------------------

    #[tokio::test]
    async fn simple_from_files_serves_its_certificate_with_http_alpn() {
        let root = ca("example.com");
        let s = Scratch::new();
        let pem = root.server("sentences");
        s.put("sentences", &pem);
        let p = plan(vec![(
            PORT,
            vec![
                https(
                    "https",
                    tls(
                        ServerTlsMode::Simple,
                        Some(files(s.path(), "sentences")),
                        None,
                    ),
                ),
                server(
                    "tls",
                    GatewayProtocol::Tls,
                    Some(tls(
                        ServerTlsMode::Simple,
                        Some(files(s.path(), "sentences")),
                        None,
                    )),
                ),
            ],
        )]);
        let certs = EdgeCertificates::load(&p, None, metrics()).unwrap();
        let got = serves(&certs, &Client::trusting(&root)).await;
        assert_eq!(got.leaf, der_of(&pem.cert));
        assert_eq!(got.alpn.as_deref(), Some(&b"h2"[..]));
        assert_eq!(got.version, ProtocolVersion::TLSv1_3);

        let tcp = certs.server_config(PORT, 1).unwrap();
        let (server, client) = handshake(tcp, Client::trusting(&root).config()).await;
        assert_eq!(
            server,
            Ok(Accepted {
                client_cert: false,
                resumed: false
            })
        );
        assert_eq!(client.unwrap().alpn, None, "TLS servers negotiate no ALPN");
    }

    #[test]
    fn servers_that_do_not_terminate_with_their_own_certificate_have_no_config() {
        let root = ca("example.com");
        let s = Scratch::new();
        s.put("sentences", &root.server("sentences"));
        let p = plan(vec![
            (8080, vec![server("http", GatewayProtocol::Http, None)]),
            (
                PORT,
                vec![
                    https("passthrough", tls(ServerTlsMode::Passthrough, None, None)),
                    https("mesh", tls(ServerTlsMode::IstioMutual, None, None)),
                    https(
                        "simple",
                        tls(
                            ServerTlsMode::Simple,
                            Some(files(s.path(), "sentences")),
                            None,
                        ),
                    ),
                ],
            ),
        ]);
        let certs = EdgeCertificates::load(&p, None, metrics()).unwrap();
        assert!(certs.server_config(8080, 0).is_none());
        assert!(certs.server_config(PORT, 0).is_none());
        assert!(certs.server_config(PORT, 1).is_none());
        assert!(certs.server_config(PORT, 2).is_some());
        assert!(certs.server_config(PORT, 3).is_none());
        assert!(certs.server_config(9999, 0).is_none());
    }

    #[tokio::test]
    async fn credential_directories_in_both_key_layouts() {
        let root = ca("example.com");
        let s = Scratch::new();
        let kube = root.server("kube");
        let generic = root.server("generic");
        s.credential("kube", &[("tls.crt", &kube.cert), ("tls.key", &kube.key)]);
        // `cert`/`key` win over `tls.crt`/`tls.key` when both are there.
        s.credential(
            "generic",
            &[
                ("cert", &generic.cert),
                ("key", &generic.key),
                ("tls.crt", &kube.cert),
                ("tls.key", &kube.key),
            ],
        );
        let p = plan(vec![
            (
                PORT,
                vec![https(
                    "kube",
                    tls(ServerTlsMode::Simple, Some(credential("kube")), None),
                )],
            ),
            (
                9443,
                vec![https(
                    "generic",
                    tls(ServerTlsMode::Simple, Some(credential("generic")), None),
                )],
            ),
        ]);
        let certs = EdgeCertificates::load(&p, Some(s.path()), metrics()).unwrap();
        let got = serves(&certs, &Client::trusting(&root)).await;
        assert_eq!(got.leaf, der_of(&kube.cert));
        let config = certs.server_config(9443, 0).unwrap();
        let (_, client) = handshake(config, Client::trusting(&root).config()).await;
        assert_eq!(client.unwrap().leaf, der_of(&generic.cert));
    }

    #[tokio::test]
    async fn the_cacert_directory_holds_the_client_ca_when_it_exists() {
        let root = ca("example.com");
        let (same, own) = (ca("same-secret-ca"), ca("cacert-secret-ca"));
        let s = Scratch::new();
        let pem = root.server("sentences");
        s.credential(
            "sentences",
            &[
                ("tls.crt", &pem.cert),
                ("tls.key", &pem.key),
                ("ca.crt", &same.pem()),
            ],
        );
        let p = one(https(
            "https",
            tls(
                ServerTlsMode::Mutual,
                Some(credential("sentences")),
                Some(ca_credential("sentences")),
            ),
        ));
        let client_of =
            |ca: &Ca| Client::trusting(&root).with_cert(&ca.issue("client", &[], (-1, 10)));

        // Without `sentences-cacert/`, the CA is the secret's own `ca.crt`.
        let certs = EdgeCertificates::load(&p, Some(s.path()), metrics()).unwrap();
        let config = certs.server_config(PORT, 0).unwrap();
        assert!(handshake(config.clone(), client_of(&same).config())
            .await
            .0
            .is_ok());
        assert_eq!(
            handshake(config, client_of(&own).config()).await.0,
            Err("unknown_ca")
        );

        // With it, its `cacert` key; also when the plan leaves the CA implied by
        // `credentialName`.
        s.credential("sentences-cacert", &[("cacert", &own.pem())]);
        let implied = one(https(
            "https",
            tls(ServerTlsMode::Mutual, Some(credential("sentences")), None),
        ));
        let certs = EdgeCertificates::load(&implied, Some(s.path()), metrics()).unwrap();
        let config = certs.server_config(PORT, 0).unwrap();
        assert!(handshake(config, client_of(&own).config()).await.0.is_ok());
        let certs = EdgeCertificates::load(&p, Some(s.path()), metrics()).unwrap();
        let config = certs.server_config(PORT, 0).unwrap();
        assert!(handshake(config.clone(), client_of(&own).config())
            .await
            .0
            .is_ok());
        assert_eq!(
            handshake(config, client_of(&same).config()).await.0,
            Err("unknown_ca")
        );
        let listed = certs.describe();
        assert!(listed[0]["ca"][0]["subject"]
            .as_str()
            .unwrap()
            .contains("cacert-secret-ca"));
        assert!(listed[0]["ca_file"]
            .as_str()
            .unwrap()
            .ends_with("sentences-cacert/cacert"));
    }

    fn load_err(p: &GatewayPlan, dir: Option<&Path>) -> EdgeCertError {
        EdgeCertificates::load(p, dir, metrics()).unwrap_err()
    }

    #[test]
    fn load_errors_name_the_server_the_port_and_the_file() {
        let root = ca("example.com");
        let s = Scratch::new();
        let pem = root.server("sentences");
        let other = root.server("other");
        s.put("sentences", &pem);

        // A missing file.
        let missing = files(&s.path().join("nowhere"), "sentences");
        let err = load_err(
            &one(https(
                "https",
                tls(ServerTlsMode::Simple, Some(missing), None),
            )),
            None,
        );
        let text = err.to_string();
        assert!(matches!(err.problem, CertProblem::Read { .. }), "{text}");
        assert!(
            text.contains("\"https\"") && text.contains("8443"),
            "{text}"
        );
        assert!(text.contains("nowhere/sentences.crt"), "{text}");

        // A key of another certificate: both files named.
        replace(&s.path().join("mismatch.crt"), &pem.cert);
        replace(&s.path().join("mismatch.key"), &other.key);
        let err = load_err(
            &one(https(
                "https",
                tls(
                    ServerTlsMode::Simple,
                    Some(files(s.path(), "mismatch")),
                    None,
                ),
            )),
            None,
        );
        let text = err.to_string();
        assert!(
            matches!(err.problem, CertProblem::KeyMismatch { .. }),
            "{text}"
        );
        assert!(
            text.contains("mismatch.crt") && text.contains("mismatch.key"),
            "{text}"
        );

        // Not a certificate.
        replace(&s.path().join("garbage.crt"), "hello");
        replace(&s.path().join("garbage.key"), &pem.key);
        let err = load_err(
            &one(https(
                "https",
                tls(
                    ServerTlsMode::Simple,
                    Some(files(s.path(), "garbage")),
                    None,
                ),
            )),
            None,
        );
        assert!(err.to_string().contains("garbage.crt"), "{err}");

        // credentialName without --credentials-dir.
        let cred = one(https(
            "https",
            tls(ServerTlsMode::Simple, Some(credential("sentences")), None),
        ));
        let err = load_err(&cred, None);
        assert!(
            matches!(err.problem, CertProblem::NoCredentialsDir { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("--credentials-dir"), "{err}");

        // A credential directory that does not exist, or lacks the keys.
        let err = load_err(&cred, Some(s.path()));
        assert!(err.to_string().contains("no such directory"), "{err}");
        s.credential("sentences", &[("README", "hi")]);
        let err = load_err(&cred, Some(s.path()));
        assert!(err.to_string().contains("found README"), "{err}");

        // MUTUAL without a CA.
        let err = load_err(
            &one(https(
                "https",
                tls(
                    ServerTlsMode::Mutual,
                    Some(files(s.path(), "sentences")),
                    None,
                ),
            )),
            None,
        );
        assert!(
            matches!(err.problem, CertProblem::MissingCa { .. }),
            "{err}"
        );

        // SIMPLE without a certificate.
        let err = load_err(
            &one(https("https", tls(ServerTlsMode::Simple, None, None))),
            None,
        );
        assert!(
            matches!(err.problem, CertProblem::MissingCertificate { .. }),
            "{err}"
        );
    }

    #[test]
    fn empty_but_present_keys_are_errors() {
        let root = ca("example.com");
        let s = Scratch::new();
        let pem = root.server("sentences");
        // Empty `cert`/`key` next to usable `tls.crt`/`tls.key`: Istio uses the latter, and
        // reports empty keys only when no pair is usable.
        s.credential(
            "fallback",
            &[
                ("cert", ""),
                ("key", ""),
                ("tls.crt", &pem.cert),
                ("tls.key", &pem.key),
            ],
        );
        s.credential("empty", &[("tls.crt", &pem.cert), ("tls.key", "")]);
        s.credential(
            "emptyca",
            &[
                ("tls.crt", &pem.cert),
                ("tls.key", &pem.key),
                ("ca.crt", ""),
            ],
        );
        let simple = |name: &str| {
            one(https(
                "https",
                tls(ServerTlsMode::Simple, Some(credential(name)), None),
            ))
        };
        EdgeCertificates::load(&simple("fallback"), Some(s.path()), metrics()).unwrap();
        let err = load_err(&simple("empty"), Some(s.path()));
        assert!(
            matches!(err.problem, CertProblem::Credential { .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains("\"tls.key\"") && err.to_string().contains("empty"),
            "{err}"
        );
        let err = load_err(
            &one(https(
                "https",
                tls(
                    ServerTlsMode::Mutual,
                    Some(credential("emptyca")),
                    Some(ca_credential("emptyca")),
                ),
            )),
            Some(s.path()),
        );
        assert!(
            err.to_string().contains("\"ca.crt\", but it is empty"),
            "{err}"
        );
    }

    #[test]
    fn protocol_versions_and_cipher_suites_are_checked_at_load() {
        let root = ca("example.com");
        let s = Scratch::new();
        s.put("sentences", &root.server("sentences"));
        let mut t = tls(
            ServerTlsMode::Simple,
            Some(files(s.path(), "sentences")),
            None,
        );
        t.min_protocol_version = TlsVersion::Tls13;
        t.max_protocol_version = TlsVersion::Tls12;
        let err = load_err(&one(https("https", t.clone())), None);
        assert!(
            matches!(err.problem, CertProblem::VersionRange { .. }),
            "{err}"
        );

        t.max_protocol_version = TlsVersion::Tls13;
        t.min_protocol_version = TlsVersion::Tls12;
        t.cipher_suites = vec!["AES128-SHA".into(), "DES-CBC3-SHA".into()];
        let err = load_err(&one(https("https", t)), None);
        assert!(matches!(err.problem, CertProblem::CipherSuites(_)), "{err}");
        assert!(
            err.to_string().contains("ECDHE-"),
            "names what is supported: {err}"
        );
    }

    // ---- client certificates -------------------------------------------------------------

    fn mutual(mode: ServerTlsMode, root: &Ca, client_ca: &Ca, s: &Scratch) -> EdgeCertificates {
        s.put("sentences", &root.server("sentences"));
        let ca = s.put_ca("client-ca.crt", &client_ca.pem());
        let p = one(https(
            "https",
            tls(mode, Some(files(s.path(), "sentences")), Some(ca_files(ca))),
        ));
        EdgeCertificates::load(&p, None, metrics()).unwrap()
    }

    #[tokio::test]
    async fn mutual_requires_a_valid_client_certificate_of_the_ca() {
        let (root, client_ca, stranger) = (ca("example.com"), ca("clients"), ca("clients"));
        let s = Scratch::new();
        let certs = mutual(ServerTlsMode::Mutual, &root, &client_ca, &s);
        let config = certs.server_config(PORT, 0).unwrap();
        let attempt = |client: Client| handshake(config.clone(), client.config());

        let good = client_ca.issue("client", &[], (-1, 10));
        let (server, client) = attempt(Client::trusting(&root).with_cert(&good)).await;
        assert_eq!(
            server,
            Ok(Accepted {
                client_cert: true,
                resumed: false
            })
        );
        assert!(client.is_some());
        let (server, _) = attempt(Client::trusting(&root).with_cert(&good).tls12(&[])).await;
        assert!(server.is_ok(), "TLS 1.2 too: {server:?}");

        let (server, client) = attempt(Client::trusting(&root)).await;
        assert_eq!(server, Err("certificate_required"));
        assert!(client.is_none());
        let (server, _) = attempt(Client::trusting(&root).tls12(&[])).await;
        assert_eq!(server, Err("certificate_required"), "TLS 1.2");

        let foreign = stranger.issue("client", &[], (-1, 10));
        let (server, _) = attempt(Client::trusting(&root).with_cert(&foreign)).await;
        assert_eq!(server, Err("unknown_ca"));

        let expired = client_ca.issue("client", &[], (-10, -1));
        let (server, _) = attempt(Client::trusting(&root).with_cert(&expired)).await;
        assert_eq!(server, Err("certificate_expired"));
    }

    #[tokio::test]
    async fn mutual_checks_subject_alt_names_when_listed() {
        let (root, client_ca) = (ca("example.com"), ca("clients"));
        let s = Scratch::new();
        s.put("sentences", &root.server("sentences"));
        let ca_path = s.put_ca("client-ca.crt", &client_ca.pem());
        let mut t = tls(
            ServerTlsMode::Mutual,
            Some(files(s.path(), "sentences")),
            Some(ca_files(ca_path)),
        );
        t.subject_alt_names = vec!["client.example.com".into()];
        let certs = EdgeCertificates::load(&one(https("https", t)), None, metrics()).unwrap();
        let config = certs.server_config(PORT, 0).unwrap();
        let named = client_ca.issue("client", &["client.example.com"], (-1, 10));
        let other = client_ca.issue("client", &["other.example.com"], (-1, 10));
        let ok = handshake(
            config.clone(),
            Client::trusting(&root).with_cert(&named).config(),
        )
        .await;
        assert!(ok.0.is_ok(), "{:?}", ok.0);
        let refused = handshake(config, Client::trusting(&root).with_cert(&other).config()).await;
        assert_eq!(refused.0, Err("bad_certificate"));
    }

    #[tokio::test]
    async fn optional_mutual_admits_clients_with_and_without_a_certificate() {
        let (root, client_ca, stranger) = (ca("example.com"), ca("clients"), ca("strangers"));
        let s = Scratch::new();
        let certs = mutual(ServerTlsMode::OptionalMutual, &root, &client_ca, &s);
        let config = certs.server_config(PORT, 0).unwrap();
        let good = client_ca.issue("client", &[], (-1, 10));
        let (server, _) = handshake(
            config.clone(),
            Client::trusting(&root).with_cert(&good).config(),
        )
        .await;
        assert_eq!(
            server,
            Ok(Accepted {
                client_cert: true,
                resumed: false
            })
        );
        let (server, _) = handshake(config.clone(), Client::trusting(&root).config()).await;
        assert_eq!(
            server,
            Ok(Accepted {
                client_cert: false,
                resumed: false
            })
        );
        // A certificate that is sent is verified.
        let foreign = stranger.issue("client", &[], (-1, 10));
        let (server, _) =
            handshake(config, Client::trusting(&root).with_cert(&foreign).config()).await;
        assert_eq!(server, Err("unknown_ca"));
    }

    // ---- versions and suites -------------------------------------------------------------

    #[tokio::test]
    async fn a_tls12_client_is_refused_when_the_minimum_is_tls13() {
        let root = ca("example.com");
        let s = Scratch::new();
        s.put("sentences", &root.server("sentences"));
        let mut t = tls(
            ServerTlsMode::Simple,
            Some(files(s.path(), "sentences")),
            None,
        );
        let default =
            EdgeCertificates::load(&one(https("https", t.clone())), None, metrics()).unwrap();
        let got = serves(&default, &Client::trusting(&root).tls12(&[])).await;
        assert_eq!(
            got.version,
            ProtocolVersion::TLSv1_2,
            "TLS 1.2 is the default minimum"
        );

        t.min_protocol_version = TlsVersion::Tls13;
        let strict = EdgeCertificates::load(&one(https("https", t)), None, metrics()).unwrap();
        let config = strict.server_config(PORT, 0).unwrap();
        let (server, client) =
            handshake(config.clone(), Client::trusting(&root).tls12(&[]).config()).await;
        assert_eq!(server, Err("protocol_version"));
        assert!(client.is_none());
        let (_, client) = handshake(config, Client::trusting(&root).config()).await;
        assert_eq!(client.unwrap().version, ProtocolVersion::TLSv1_3);
    }

    #[tokio::test]
    async fn cipher_suites_restrict_tls12_in_the_order_given() {
        use rustls::crypto::aws_lc_rs::cipher_suite as cs;
        let root = ca("example.com");
        let s = Scratch::new();
        s.put("sentences", &root.server("sentences"));
        let mut t = tls(
            ServerTlsMode::Simple,
            Some(files(s.path(), "sentences")),
            None,
        );
        t.cipher_suites = vec![
            "ECDHE-ECDSA-CHACHA20-POLY1305".into(),
            "[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-RSA-AES128-GCM-SHA256]".into(),
            "AES128-SHA".into(),
        ];
        let certs = EdgeCertificates::load(&one(https("https", t)), None, metrics()).unwrap();
        let config = certs.server_config(PORT, 0).unwrap();

        let refused = Client::trusting(&root).tls12(&[cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384]);
        let (server, _) = handshake(config.clone(), refused.config()).await;
        assert_eq!(server, Err("no_shared_cipher"));

        // The server's order decides.
        let both = Client::trusting(&root).tls12(&[
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ]);
        let (_, client) = handshake(config.clone(), both.config()).await;
        assert_eq!(
            client.unwrap().suite,
            CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        );
        let aes = Client::trusting(&root).tls12(&[cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]);
        let (_, client) = handshake(config.clone(), aes.config()).await;
        assert_eq!(
            client.unwrap().suite,
            CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        );

        // TLS 1.3 suites are not restricted.
        let (_, client) = handshake(config, Client::trusting(&root).config()).await;
        assert_eq!(client.unwrap().version, ProtocolVersion::TLSv1_3);
    }

    // ---- reloading -----------------------------------------------------------------------

    #[tokio::test]
    async fn a_replaced_file_is_served_to_the_next_handshake() {
        let root = ca("example.com");
        let s = Scratch::new();
        let (first, second) = (root.server("first"), root.server("second"));
        s.put("sentences", &first);
        let m = metrics();
        let p = one(https(
            "https",
            tls(
                ServerTlsMode::Simple,
                Some(files(s.path(), "sentences")),
                None,
            ),
        ));
        let certs = EdgeCertificates::load(&p, None, m.clone()).unwrap();
        let client = Client::trusting(&root);
        assert_eq!(serves(&certs, &client).await.leaf, der_of(&first.cert));

        certs.refresh();
        assert_eq!(
            metric(&m, "outrider_gateway_certificate_reloads_total", &[]),
            0.0
        );

        s.put("sentences", &second);
        certs.refresh();
        assert_eq!(serves(&certs, &client).await.leaf, der_of(&second.cert));
        let ok = [("server", "https"), ("result", "ok")];
        assert_eq!(
            metric(&m, "outrider_gateway_certificate_reloads_total", &ok),
            1.0
        );

        // Rewritten in place with the very same bytes: nothing to do.
        std::fs::write(s.path().join("sentences.crt"), &second.cert).unwrap();
        certs.refresh();
        assert_eq!(
            metric(&m, "outrider_gateway_certificate_reloads_total", &ok),
            1.0
        );
    }

    #[tokio::test]
    async fn a_broken_replacement_keeps_the_served_certificate_and_counts_once() {
        let root = ca("example.com");
        let s = Scratch::new();
        let (first, second, third) = (
            root.server("first"),
            root.server("second"),
            root.server("third"),
        );
        s.put("sentences", &first);
        let m = metrics();
        let p = one(https(
            "https",
            tls(
                ServerTlsMode::Simple,
                Some(files(s.path(), "sentences")),
                None,
            ),
        ));
        let certs = EdgeCertificates::load(&p, None, m.clone()).unwrap();
        let client = Client::trusting(&root);
        let failed = [("server", "https"), ("result", "failed")];

        // The new certificate with the old key.
        replace(&s.path().join("sentences.crt"), &second.cert);
        certs.refresh();
        certs.refresh();
        assert_eq!(serves(&certs, &client).await.leaf, der_of(&first.cert));
        assert_eq!(
            metric(&m, "outrider_gateway_certificate_reloads_total", &failed),
            1.0
        );

        // Garbage, then a missing file: each a new failure, counted once.
        replace(
            &s.path().join("sentences.crt"),
            "-----BEGIN CERTIFICATE-----\nnope\n",
        );
        certs.refresh();
        certs.refresh();
        std::fs::remove_file(s.path().join("sentences.crt")).unwrap();
        certs.refresh();
        certs.refresh();
        assert_eq!(
            metric(&m, "outrider_gateway_certificate_reloads_total", &failed),
            3.0
        );
        assert_eq!(serves(&certs, &client).await.leaf, der_of(&first.cert));

        // Fixed: served.
        s.put("sentences", &third);
        certs.refresh();
        assert_eq!(serves(&certs, &client).await.leaf, der_of(&third.cert));
        let ok = [("server", "https"), ("result", "ok")];
        assert_eq!(
            metric(&m, "outrider_gateway_certificate_reloads_total", &ok),
            1.0
        );
    }

    /// A Kubernetes secret volume: `..<version>/` directories, `..data` pointing at the
    /// current one, and every key a symlink through `..data`.
    fn kube_secret(dir: &Path, version: &str, keys: &[(&str, &str)]) {
        std::fs::create_dir_all(dir).unwrap();
        let versioned = dir.join(version);
        std::fs::create_dir(&versioned).unwrap();
        for (key, contents) in keys {
            std::fs::write(versioned.join(key), contents).unwrap();
            let link = dir.join(key);
            if std::fs::symlink_metadata(&link).is_err() {
                symlink(Path::new("..data").join(key), &link).unwrap();
            }
        }
        // The atomic swap: a new symlink renamed over `..data`.
        let tmp = dir.join("..data_tmp");
        symlink(version, &tmp).unwrap();
        std::fs::rename(&tmp, dir.join("..data")).unwrap();
    }

    #[tokio::test]
    async fn the_data_symlink_swap_of_a_mounted_secret_is_picked_up() {
        let root = ca("example.com");
        let s = Scratch::new();
        let (first, second) = (root.server("first"), root.server("second"));
        let secret = s.path().join("sentences-credential");
        kube_secret(
            &secret,
            "..2026_a",
            &[("tls.crt", &first.cert), ("tls.key", &first.key)],
        );
        let m = metrics();
        let p = one(https(
            "https",
            tls(
                ServerTlsMode::Simple,
                Some(credential("sentences-credential")),
                None,
            ),
        ));
        let certs = EdgeCertificates::load(&p, Some(s.path()), m.clone()).unwrap();
        let client = Client::trusting(&root);
        assert_eq!(serves(&certs, &client).await.leaf, der_of(&first.cert));

        kube_secret(
            &secret,
            "..2026_b",
            &[("tls.crt", &second.cert), ("tls.key", &second.key)],
        );
        // The kubelet removes the old version after the swap.
        std::fs::remove_dir_all(secret.join("..2026_a")).unwrap();
        certs.refresh();
        assert_eq!(serves(&certs, &client).await.leaf, der_of(&second.cert));
        let listed = certs.describe();
        assert!(listed[0]["certificate_file"]
            .as_str()
            .unwrap()
            .ends_with("sentences-credential/tls.crt"));
        assert_eq!(
            metric(
                &m,
                "outrider_gateway_certificate_reloads_total",
                &[("result", "ok")]
            ),
            1.0
        );
    }

    #[tokio::test]
    async fn a_new_client_ca_voids_sessions_verified_under_the_old_one() {
        let (root, client_ca, next_ca) = (ca("example.com"), ca("clients"), ca("next clients"));
        let s = Scratch::new();
        let certs = mutual(ServerTlsMode::Mutual, &root, &client_ca, &s);
        let good = client_ca.issue("client", &[], (-1, 10));
        let client = Client::trusting(&root).with_cert(&good).config();
        let accepted = |resumed| {
            Ok(Accepted {
                client_cert: true,
                resumed,
            })
        };

        let config = certs.server_config(PORT, 0).unwrap();
        assert_eq!(
            handshake(config.clone(), client.clone()).await.0,
            accepted(false)
        );
        assert_eq!(
            handshake(config, client.clone()).await.0,
            accepted(true),
            "resumed"
        );

        // The client CA file now holds another CA as well: the configuration is rebuilt, and
        // the client's ticket from the old one no longer resumes.
        s.put_ca(
            "client-ca.crt",
            &format!("{}{}", client_ca.pem(), next_ca.pem()),
        );
        certs.refresh();
        let config = certs.server_config(PORT, 0).unwrap();
        assert_eq!(
            handshake(config.clone(), client.clone()).await.0,
            accepted(false)
        );
        assert_eq!(handshake(config, client).await.0, accepted(true));
    }

    #[tokio::test]
    async fn watch_refreshes_until_stopped() {
        let root = ca("example.com");
        let s = Scratch::new();
        let (first, second) = (root.server("first"), root.server("second"));
        s.put("sentences", &first);
        let p = one(https(
            "https",
            tls(
                ServerTlsMode::Simple,
                Some(files(s.path(), "sentences")),
                None,
            ),
        ));
        let certs = EdgeCertificates::load(&p, None, metrics()).unwrap();
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(certs.clone().watch(Duration::from_millis(20), stopped));

        s.put("sentences", &second);
        let client = Client::trusting(&root);
        let mut served = Vec::new();
        for _ in 0..500 {
            served = serves(&certs, &client).await.leaf;
            if served == der_of(&second.cert) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(served, der_of(&second.cert));
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the watcher stopped")
            .unwrap();
    }

    // ---- configuration reloads -------------------------------------------------------------

    #[test]
    fn update_keeps_unchanged_servers_and_is_all_or_nothing() {
        let root = ca("example.com");
        let s = Scratch::new();
        s.put("a", &root.server("a"));
        s.put("b", &root.server("b"));
        let m = metrics();
        let simple = |name: &str| tls(ServerTlsMode::Simple, Some(files(s.path(), name)), None);
        let p = one(https("https", simple("a")));
        let certs = EdgeCertificates::load(&p, None, m.clone()).unwrap();
        let before = certs.server_config(PORT, 0).unwrap();

        // Same settings, now second on the port and a new server first: kept as is.
        let p2 = plan(vec![(
            PORT,
            vec![https("b", simple("b")), https("https", simple("a"))],
        )]);
        certs.update(&p2).unwrap();
        assert!(Arc::ptr_eq(&before, &certs.server_config(PORT, 1).unwrap()));
        assert!(certs.server_config(PORT, 0).is_some());
        assert!(
            metric(
                &m,
                "outrider_gateway_certificate_expiry_timestamp_seconds",
                &[("server", "b")]
            ) > 0.0
        );

        // A new server that fails: an error, and the previous set stays.
        let p3 = plan(vec![(PORT, vec![https("c", simple("missing"))])]);
        let err = certs.update(&p3).unwrap_err();
        assert_eq!(err.server, "c");
        assert!(Arc::ptr_eq(&before, &certs.server_config(PORT, 1).unwrap()));

        // A server removed: its expiry gauge goes.
        certs.update(&p).unwrap();
        assert!(certs.server_config(PORT, 1).is_none());
        assert!(!m.encode().contains("server=\"b\""));
    }

    // ---- /certs ----------------------------------------------------------------------------

    #[test]
    fn describe_lists_each_served_certificate_and_client_ca() {
        let (root, client_ca) = (ca("example.com"), ca("clients"));
        let s = Scratch::new();
        let m = metrics();
        s.put("sentences", &root.server("sentences"));
        let ca_path = s.put_ca("client-ca.crt", &client_ca.pem());
        let p = plan(vec![
            (
                PORT,
                vec![https(
                    "https",
                    tls(
                        ServerTlsMode::Mutual,
                        Some(files(s.path(), "sentences")),
                        Some(ca_files(ca_path)),
                    ),
                )],
            ),
            (8080, vec![server("http", GatewayProtocol::Http, None)]),
        ]);
        let certs = EdgeCertificates::load(&p, None, m.clone()).unwrap();
        let listed = certs.describe();
        let all = listed.as_array().unwrap();
        assert_eq!(all.len(), 1, "{listed:#}");
        let e = &all[0];
        assert_eq!(e["port"], 8443);
        assert_eq!(e["server"], "https");
        assert_eq!(e["mode"], "MUTUAL");
        assert_eq!(e["source"], "serverCertificate");
        assert!(
            e["subject"].as_str().unwrap().contains("CN=sentences"),
            "{e:#}"
        );
        assert_eq!(e["sans"], serde_json::json!([HOST]));
        assert!(
            e["issuer"].as_str().unwrap().contains("CN=example.com"),
            "{e:#}"
        );
        assert!(!e["serial"].as_str().unwrap().is_empty());
        assert!(e["not_after"].as_str().unwrap().contains(':'), "{e:#}");
        assert!(e["ca"][0]["subject"]
            .as_str()
            .unwrap()
            .contains("CN=clients"));
        let not_after = e["not_after_unix"].as_i64().unwrap();
        assert!(not_after > unix_now() + 20 * 86_400);
        assert_eq!(
            metric(
                &m,
                "outrider_gateway_certificate_expiry_timestamp_seconds",
                &[("server", "https")]
            ),
            not_after as f64
        );
        assert!(!serde_json::to_string(&listed)
            .unwrap()
            .contains("PRIVATE KEY"));
    }

    #[test]
    fn edge_certificates_are_shared_across_threads() {
        fn shared<T: Send + Sync + Clone + 'static>() {}
        shared::<EdgeCertificates>();
    }

    #[test]
    fn handshake_outcomes_name_the_alert() {
        use rustls::{AlertDescription, CertificateError, Error, PeerIncompatible};
        let io = |e: Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let cases = [
            (Error::NoCertificatesPresented, "certificate_required"),
            (
                Error::InvalidCertificate(CertificateError::UnknownIssuer),
                "unknown_ca",
            ),
            (
                Error::InvalidCertificate(CertificateError::Expired),
                "certificate_expired",
            ),
            (
                Error::InvalidCertificate(CertificateError::NotValidForName),
                "bad_certificate",
            ),
            (
                Error::PeerIncompatible(PeerIncompatible::SupportedVersionsExtensionRequired),
                "protocol_version",
            ),
            (
                Error::PeerIncompatible(PeerIncompatible::NoCipherSuitesInCommon),
                "no_shared_cipher",
            ),
            (
                Error::AlertReceived(AlertDescription::UnknownCA),
                "unknown_ca",
            ),
            (Error::AlertReceived(AlertDescription::DecodeError), "other"),
        ];
        for (err, want) in cases {
            assert_eq!(handshake_outcome(&io(err.clone())), want, "{err:?}");
        }
        assert_eq!(handshake_outcome(&std::io::Error::other("reset")), "other");
    }
}
