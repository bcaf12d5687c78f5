//! Client TLS for DestinationRule `SIMPLE` and `MUTUAL` modes: one-way or mutual TLS to a
//! destination that is not a mesh sidecar, with certificates from files (Istio's
//! DestinationRule `ClientTLSSettings`).
//!
//! Built when a plan is built, never on the data path. `insecureSkipVerify` is refused: a
//! verifier that skips checks has no place outside tests.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Why a SIMPLE/MUTUAL client configuration cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum OriginationError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} holds no usable PEM {what}")]
    NoPem { path: String, what: &'static str },
    #[error("caCertificates is required for SIMPLE and MUTUAL (outrider does not use an OS trust store)")]
    NoCa,
    #[error("insecureSkipVerify is not supported: outrider never skips certificate verification")]
    InsecureSkipVerify,
    #[error("{0:?} is not a valid TLS server name")]
    BadName(String),
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A DestinationRule's SIMPLE or MUTUAL settings, as far as TLS needs them.
#[derive(Debug, Clone, Copy)]
pub struct FileTls<'a> {
    /// PEM roots that verify the server (`caCertificates`); required.
    pub ca_certificates: Option<&'a Path>,
    /// Names the server certificate must hold (`subjectAltNames`); none: the SNI.
    pub subject_alt_names: &'a [String],
    /// SNI to send (`sni`); none: the endpoint's host.
    pub sni: Option<&'a str>,
    /// `insecureSkipVerify`: refused.
    pub insecure_skip_verify: bool,
    /// MUTUAL: the client certificate chain and key files.
    pub client: Option<(&'a Path, &'a Path)>,
}

/// Builds the client config and the server name to send for a SIMPLE or MUTUAL endpoint.
/// `host` is the endpoint's host, used as SNI and for verification when the rule sets no
/// `sni` and no `subjectAltNames` (Istio's auto SNI / auto SAN validation).
pub fn client_config(
    tls: FileTls<'_>,
    host: &str,
) -> Result<(Arc<ClientConfig>, ServerName<'static>), OriginationError> {
    let FileTls {
        ca_certificates: ca,
        subject_alt_names: sans,
        sni,
        insecure_skip_verify: skip,
        client,
    } = tls;
    if skip {
        return Err(OriginationError::InsecureSkipVerify);
    }
    let ca = ca.ok_or(OriginationError::NoCa)?;
    let mut roots = RootCertStore::empty();
    for cert in read_certs(ca)? {
        roots.add(cert)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let mut names = Vec::new();
    for san in sans {
        names.push(
            ServerName::try_from(san.clone())
                .map_err(|_| OriginationError::BadName(san.clone()))?,
        );
    }
    let verifier = Arc::new(SanVerifier {
        inner: webpki,
        names,
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(rustls::ALL_VERSIONS)?
        .dangerous() // not dangerous: the custom verifier wraps full WebPKI validation
        .with_custom_certificate_verifier(verifier);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = read_certs(cert)?;
            let key = read_key(key)?;
            builder.with_client_auth_cert(chain, key)?
        }
    };
    let name = sni.unwrap_or(host).to_string();
    let server_name =
        ServerName::try_from(name.clone()).map_err(|_| OriginationError::BadName(name))?;
    Ok((Arc::new(config), server_name))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, OriginationError> {
    let bytes = std::fs::read(path).map_err(|source| OriginationError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(OriginationError::NoPem {
            path: path.display().to_string(),
            what: "certificate",
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, OriginationError> {
    let bytes = std::fs::read(path).map_err(|source| OriginationError::Read {
        path: path.display().to_string(),
        source,
    })?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| OriginationError::NoPem {
        path: path.display().to_string(),
        what: "private key",
    })
}

/// WebPKI validation against the names in `subjectAltNames` (any one may match) instead of
/// the SNI; plain WebPKI against the SNI when the list is empty.
#[derive(Debug)]
struct SanVerifier {
    inner: Arc<WebPkiServerVerifier>,
    names: Vec<ServerName<'static>>,
}

impl ServerCertVerifier for SanVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.names.is_empty() {
            return self.inner.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp,
                now,
            );
        }
        let mut last = None;
        for name in &self.names {
            match self
                .inner
                .verify_server_cert(end_entity, intermediates, name, ocsp, now)
            {
                Ok(v) => return Ok(v),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(rustls::Error::General("no subjectAltNames".into())))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
