//! The HTTP/1.1 GET behind JWKS fetches: plain http, or https verified against a PEM bundle
//! or the compiled-in Mozilla roots; a capped body; no redirects; OIDC discovery.
//!
//! Deliberately small: one request per connection (fetches are minutes apart), no proxy
//! support (`HTTPS_PROXY` is not read), no redirects (a 3xx is a failed fetch that names the
//! `location`, so a moved endpoint is fixed in the configuration, not silently followed).

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_LENGTH, HOST, LOCATION, USER_AGENT};
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{JwksError, JwksSource};

/// Where an OIDC provider publishes its configuration, relative to the issuer.
const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

/// Sends GETs for JWKS documents; built once, shared by every source.
pub(crate) struct Client {
    tls: TlsConnector,
    max_body: usize,
}

impl Client {
    /// A client whose https peers must chain to the certificates of `ca_file` (PEM) when
    /// given, else to Mozilla's roots (compiled in: the FROM-scratch image has no
    /// `/etc/ssl`). Bodies longer than `max_body` bytes are refused.
    pub(crate) fn new(ca_file: Option<&Path>, max_body: usize) -> Result<Client, JwksError> {
        let roots = match ca_file {
            Some(path) => file_roots(path)?,
            None => RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
        };
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("the aws-lc-rs provider supports TLS 1.2 and 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Client {
            tls: TlsConnector::from(Arc::new(config)),
            max_body,
        })
    }

    /// The JWKS document of `source`: a GET of its URI, or for discovery a GET of the
    /// issuer's `/.well-known/openid-configuration`, then of the `jwks_uri` it names.
    pub(crate) async fn jwks(&self, source: &JwksSource) -> Result<Bytes, JwksError> {
        match source {
            JwksSource::Uri(uri) => self.get(uri).await,
            JwksSource::Discovery { issuer } => {
                let url = discovery_url(issuer);
                let document = self.get(&url).await?;
                let jwks_uri = jwks_uri(&document).map_err(|reason| JwksError::Discovery {
                    url: url.clone(),
                    reason,
                })?;
                self.get(&jwks_uri).await
            }
        }
    }

    /// One GET of `url`: the body of a 2xx answer, at most `max_body` bytes.
    pub(crate) async fn get(&self, url: &str) -> Result<Bytes, JwksError> {
        let bad = |reason: &str| JwksError::BadUri {
            uri: url.to_string(),
            reason: reason.to_string(),
        };
        let uri: Uri = url.parse().map_err(|_| bad("not a URI"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("the scheme must be http or https")),
        };
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("credentials in the URI are not supported"));
        }
        let host = authority.host();
        // `host()` keeps the brackets of an IPv6 literal; sockets and SNI want it bare.
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let request = Request::get(path)
            .header(HOST, authority.as_str())
            .header(ACCEPT, "application/json")
            .header(USER_AGENT, concat!("outrider/", env!("CARGO_PKG_VERSION")))
            .body(Empty::<Bytes>::new())
            .map_err(|_| bad("not a valid request target"))?;
        let tcp = TcpStream::connect((bare, port))
            .await
            .map_err(|error| JwksError::Connect {
                uri: url.to_string(),
                error,
            })?;
        if tls {
            let name = ServerName::try_from(bare.to_string())
                .map_err(|_| bad("the host is not a valid TLS server name"))?;
            let stream = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|error| JwksError::Tls {
                    uri: url.to_string(),
                    error,
                })?;
            self.exchange(url, stream, request).await
        } else {
            self.exchange(url, tcp, request).await
        }
    }

    async fn exchange<S>(
        &self,
        url: &str,
        stream: S,
        request: Request<Empty<Bytes>>,
    ) -> Result<Bytes, JwksError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let http = |error: hyper::Error| JwksError::Http {
            uri: url.to_string(),
            reason: error.to_string(),
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http)?;
        // The connection is driven beside the exchange and dropped with it; its errors reach
        // the exchange through the response or its body.
        let drive = async move {
            let _ = connection.await;
            std::future::pending::<std::convert::Infallible>().await
        };
        let exchange = async {
            let response = sender.send_request(request).await.map_err(http)?;
            let status = response.status();
            if status.is_redirection() {
                let location = response
                    .headers()
                    .get(LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                return Err(JwksError::Redirect {
                    uri: url.to_string(),
                    status: status.as_u16(),
                    location,
                });
            }
            if !status.is_success() {
                return Err(JwksError::Status {
                    uri: url.to_string(),
                    status: status.as_u16(),
                });
            }
            let too_large = || JwksError::TooLarge {
                uri: url.to_string(),
                limit: self.max_body,
            };
            let declared = response
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|len| len > self.max_body as u64) {
                return Err(too_large());
            }
            match Limited::new(response.into_body(), self.max_body)
                .collect()
                .await
            {
                Ok(body) => Ok(body.to_bytes()),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
                Err(e) => Err(JwksError::Http {
                    uri: url.to_string(),
                    reason: e.to_string(),
                }),
            }
        };
        tokio::select! {
            result = exchange => result,
            never = drive => match never {},
        }
    }
}

/// The certificates of a PEM bundle, as trust anchors.
fn file_roots(path: &Path) -> Result<RootCertStore, JwksError> {
    let failed = |reason: String| JwksError::CaFile {
        path: path.to_path_buf(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| failed(e.to_string()))? {
        let cert = cert.map_err(|e| failed(e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| failed(format!("a certificate is not a usable root: {e}")))?;
    }
    if roots.is_empty() {
        return Err(failed("no PEM certificate in the file".into()));
    }
    Ok(roots)
}

/// `<issuer>/.well-known/openid-configuration` (OpenID Connect Discovery 1.0 §4: a trailing
/// `/` of the issuer is not doubled).
pub(crate) fn discovery_url(issuer: &str) -> String {
    format!("{}{DISCOVERY_PATH}", issuer.trim_end_matches('/'))
}

/// The `jwks_uri` of an OpenID provider configuration document.
fn jwks_uri(document: &[u8]) -> Result<String, String> {
    let value: serde_json::Value =
        serde_json::from_slice(document).map_err(|e| format!("not JSON: {e}"))?;
    match value.get("jwks_uri") {
        Some(serde_json::Value::String(uri)) => Ok(uri.clone()),
        Some(_) => Err("jwks_uri is not a string".into()),
        None => Err("no jwks_uri".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_url_appends_the_well_known_path_once() {
        assert_eq!(
            discovery_url("https://idp.example/realms/demo"),
            "https://idp.example/realms/demo/.well-known/openid-configuration"
        );
        assert_eq!(
            discovery_url("https://idp.example/"),
            "https://idp.example/.well-known/openid-configuration"
        );
    }

    #[test]
    fn jwks_uri_is_read_from_the_provider_configuration() {
        let doc = br#"{"issuer":"https://idp.example","jwks_uri":"https://idp.example/certs"}"#;
        assert_eq!(jwks_uri(doc).unwrap(), "https://idp.example/certs");
        assert_eq!(jwks_uri(b"{}").unwrap_err(), "no jwks_uri");
        assert_eq!(
            jwks_uri(br#"{"jwks_uri":1}"#).unwrap_err(),
            "jwks_uri is not a string"
        );
        assert!(jwks_uri(b"<html>").unwrap_err().starts_with("not JSON"));
    }

    #[tokio::test]
    async fn only_http_and_https_uris_are_fetched() {
        let client = Client::new(None, 1024).unwrap();
        for (uri, reason) in [
            ("ftp://idp.example/keys", "the scheme must be http or https"),
            ("/keys", "the scheme must be http or https"),
            ("http://user:pw@idp.example/keys", "credentials in the URI"),
            ("not a uri", "not a URI"),
        ] {
            let err = client.get(uri).await.unwrap_err();
            assert!(err.to_string().contains(reason), "{uri}: {err}");
        }
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "nothing here\n").unwrap();
        let Err(err) = Client::new(Some(&empty), 1024) else {
            panic!("a CA file without certificates was accepted");
        };
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
        let missing = dir.path().join("missing.pem");
        assert!(Client::new(Some(&missing), 1024).is_err());
    }
}
