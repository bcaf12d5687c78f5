//! The edge TLS building blocks (`outrider::tls::edge`) against the labs' own files: the
//! certificates are made with the labs' `openssl` commands verbatim (the server and client
//! certificates come out X.509 v1), served by a small tokio-rustls server built from
//! `certified_key`, `SniCertificates` and `EdgeClientVerifier`, and fetched with `curl`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

use outrider::tls::edge::{certified_key, EdgeClientVerifier, SniCertificates};

use crate::common::{temp_dir, tool_available};

/// The labs' commands, verbatim (secure-ingress task of istio.io).
pub(crate) const LAB_COMMANDS: &[&str] = &[
    "openssl req -x509 -sha256 -nodes -days 365 -newkey rsa:2048 -subj '/O=example Inc./CN=example.com' -keyout example.com.key -out example.com.crt",
    "openssl req -out sentences.example.com.csr -newkey rsa:2048 -nodes -keyout sentences.example.com.key -subj \"/CN=sentences.example.com/O=ACMEorg\"",
    "openssl x509 -req -days 365 -CA example.com.crt -CAkey example.com.key -set_serial 0 -in sentences.example.com.csr -out sentences.example.com.crt",
    "openssl req -out client.example.com.csr -newkey rsa:2048 -nodes -keyout client.example.com.key -subj \"/CN=client.example.com/O=ACMEorg\"",
    "openssl x509 -req -days 365 -CA example.com.crt -CAkey example.com.key -set_serial 1 -in client.example.com.csr -out client.example.com.crt",
];

/// The labs' files in a scratch directory, plus `other/`: the same commands again, i.e. a
/// second root with the very same name and a client certificate from it.
pub(crate) struct Labs {
    pub(crate) dir: tempfile::TempDir,
}

impl Labs {
    /// `None` (test skipped) when openssl or curl is missing.
    pub(crate) fn make() -> Option<Labs> {
        if !tool_available("openssl") || !tool_available("curl") {
            return None;
        }
        let dir = temp_dir("edge-tls");
        let other = dir.path().join("other");
        std::fs::create_dir(&other).unwrap();
        for cwd in [dir.path(), other.as_path()] {
            for cmd in LAB_COMMANDS {
                let out = Command::new("sh")
                    .args(["-c", cmd])
                    .current_dir(cwd)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{cmd}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        Some(Labs { dir })
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub(crate) fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap()
    }

    pub(crate) fn x509_text(&self, name: &str) -> String {
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(self.path(name))
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    }

    /// The SIMPLE/MUTUAL server configuration: the labs' sentences certificate by SNI, client
    /// certificates judged by `verifier` (none: SIMPLE).
    fn server_config(&self, verifier: Option<EdgeClientVerifier>) -> Arc<ServerConfig> {
        let key = certified_key(
            &self.read("sentences.example.com.crt"),
            &self.read("sentences.example.com.key"),
        )
        .unwrap();
        let mut sni = SniCertificates::new();
        sni.insert("sentences.example.com", key);
        let verifier: Arc<dyn ClientCertVerifier> = match verifier {
            Some(v) => Arc::new(v),
            None => WebPkiClientVerifier::no_client_auth(),
        };
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(sni));
        Arc::new(config)
    }

    fn verifier(&self, sans: &[&str], mandatory: bool) -> EdgeClientVerifier {
        EdgeClientVerifier::new(
            &self.read("example.com.crt"),
            sans.iter().map(|s| s.to_string()).collect(),
            mandatory,
        )
        .unwrap()
    }
}

/// What the server saw of one connection: the client certificate presence (handshake done) or
/// the handshake failure's reason (`outrider::tls::failure_reason`).
type Seen = Result<bool, String>;

/// A tiny HTTPS server on 127.0.0.1:0 answering every request `200` with a body saying
/// whether a (verified) client certificate was presented. Stops when dropped.
struct Server {
    port: u16,
    seen: mpsc::UnboundedReceiver<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    async fn start(config: Arc<ServerConfig>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let acceptor = TlsAcceptor::from(config);
        let (tx, seen) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let handshake =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await;
                    let mut tls = match handshake {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            let reason = e
                                .get_ref()
                                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                                .map(|err| outrider::tls::failure_reason(err).to_string())
                                .unwrap_or_else(|| e.to_string());
                            let _ = tx.send(Err(reason));
                            return;
                        }
                        Err(_) => {
                            let _ = tx.send(Err("handshake timeout".into()));
                            return;
                        }
                    };
                    let client_cert = tls.get_ref().1.peer_certificates().is_some();
                    let _ = tx.send(Ok(client_cert));
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let body = format!("sentence; client certificate: {client_cert}\n");
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(response.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        Server { port, seen, task }
    }

    async fn next_seen(&mut self) -> Seen {
        tokio::time::timeout(Duration::from_secs(10), self.seen.recv())
            .await
            .expect("the server saw the connection")
            .unwrap()
    }
}

pub(crate) struct Curl {
    pub(crate) ok: bool,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// The labs' curl command against `port`, run in the labs' directory, plus `extra` arguments.
pub(crate) async fn curl(cwd: &Path, port: u16, extra: &[&str]) -> Curl {
    let out = tokio::process::Command::new("curl")
        .current_dir(cwd)
        .args(["--silent", "--show-error", "--max-time", "10"])
        .args(extra)
        .args(["--cacert", "example.com.crt", "--resolve"])
        .arg(format!("sentences.example.com:{port}:127.0.0.1"))
        .arg(format!("https://sentences.example.com:{port}/"))
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    Curl {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub(crate) const CLIENT_CERT: &[&str] = &[
    "--cert",
    "client.example.com.crt",
    "--key",
    "client.example.com.key",
];

#[tokio::test]
async fn simple_serves_the_labs_v1_certificate_to_curl() {
    let Some(labs) = Labs::make() else { return };
    for v1 in ["sentences.example.com.crt", "client.example.com.crt"] {
        assert!(labs.x509_text(v1).contains("Version: 1 (0x0)"), "{v1}");
    }
    assert!(labs
        .x509_text("example.com.crt")
        .contains("Version: 3 (0x2)"));

    let mut server = Server::start(labs.server_config(None)).await;
    let out = curl(labs.dir.path(), server.port, &[]).await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(out.stdout, "sentence; client certificate: false\n");
    assert_eq!(server.next_seen().await, Ok(false));
}

#[tokio::test]
async fn mutual_requires_a_client_certificate_of_the_configured_ca() {
    let Some(labs) = Labs::make() else { return };
    let mut server = Server::start(labs.server_config(Some(labs.verifier(&[], true)))).await;
    let dir = labs.dir.path();

    // The labs' v1 client certificate, over TLS 1.3 and over TLS 1.2.
    let out = curl(dir, server.port, CLIENT_CERT).await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(out.stdout, "sentence; client certificate: true\n");
    assert_eq!(server.next_seen().await, Ok(true));
    let tls12 = [CLIENT_CERT, &["--tlsv1.2", "--tls-max", "1.2"]].concat();
    let out = curl(dir, server.port, &tls12).await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(server.next_seen().await, Ok(true));

    // No client certificate: refused with `certificate required`.
    let out = curl(dir, server.port, &[]).await;
    assert!(!out.ok, "{}", out.stdout);
    assert!(
        out.stderr.contains("certificate required"),
        "{}",
        out.stderr
    );
    assert_eq!(server.next_seen().await, Err("no_client_cert".into()));

    // A client certificate from another CA (same name, other key): `unknown ca`.
    let other = [
        "--cert",
        "other/client.example.com.crt",
        "--key",
        "other/client.example.com.key",
    ];
    let out = curl(dir, server.port, &other).await;
    assert!(!out.ok, "{}", out.stdout);
    assert!(out.stderr.contains("unknown ca"), "{}", out.stderr);
    assert_eq!(server.next_seen().await, Err("unknown_issuer".into()));
}

#[tokio::test]
async fn optional_mutual_admits_clients_with_and_without_a_certificate() {
    let Some(labs) = Labs::make() else { return };
    let mut server = Server::start(labs.server_config(Some(labs.verifier(&[], false)))).await;
    let dir = labs.dir.path();

    let out = curl(dir, server.port, CLIENT_CERT).await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(out.stdout, "sentence; client certificate: true\n");
    assert_eq!(server.next_seen().await, Ok(true));

    let out = curl(dir, server.port, &[]).await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(out.stdout, "sentence; client certificate: false\n");
    assert_eq!(server.next_seen().await, Ok(false));
}

#[tokio::test]
async fn subject_alt_names_refuse_the_labs_v1_client_certificate() {
    let Some(labs) = Labs::make() else { return };
    let verifier = labs.verifier(&["client.example.com"], true);
    let mut server = Server::start(labs.server_config(Some(verifier))).await;

    let out = curl(labs.dir.path(), server.port, CLIENT_CERT).await;
    assert!(!out.ok, "{}", out.stdout);
    assert!(out.stderr.contains("bad certificate"), "{}", out.stderr);
    assert_eq!(server.next_seen().await, Err("other".into()));
}
