//! The gateway's edge certificates (`outrider::gateway::certs::EdgeCertificates`) with the
//! labs' own files: made by the labs' `openssl` commands verbatim (the server and client
//! certificates are X.509 v1), laid out as the labs' Kubernetes secrets under a credentials
//! directory, served by a small tokio-rustls server that asks `EdgeCertificates` for the
//! configuration of every connection, and fetched with the labs' `curl` commands. Skipped
//! without openssl or curl unless `OUTRIDER_REQUIRE_TOOLS=1`.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

use outrider::config::{
    CaSource, CertificateSource, GatewayPlan, GatewayPortPlan, GatewayProtocol, GatewayServer,
    ServerTls, ServerTlsMode, TlsVersion,
};
use outrider::gateway::certs::{handshake_outcome, EdgeCertificates};
use outrider::metrics::Metrics;

use crate::common::{metric_sum, temp_dir};
use crate::edge_tls::{curl, Curl, Labs, CLIENT_CERT};

/// The plan ports of the two servers (never bound: the test server listens on port 0).
const SIMPLE_PORT: u16 = 8443;
const MUTUAL_PORT: u16 = 9443;

fn server(name: &str, mode: ServerTlsMode, credential: &str) -> GatewayServer {
    let verifies = mode != ServerTlsMode::Simple;
    GatewayServer {
        gateway: "default/sentences-gateway".into(),
        name: name.into(),
        protocol: GatewayProtocol::Https,
        hosts: vec!["sentences.example.com".into()],
        tls: Some(ServerTls {
            mode,
            certificate: Some(CertificateSource::Credential {
                name: credential.into(),
            }),
            ca_certificates: verifies.then(|| CaSource::Credential {
                name: credential.into(),
            }),
            subject_alt_names: Vec::new(),
            min_protocol_version: TlsVersion::Tls12,
            max_protocol_version: TlsVersion::Tls13,
            cipher_suites: Vec::new(),
        }),
        https_redirect: false,
        http: Vec::new(),
        tls_routes: Vec::new(),
        tcp: Vec::new(),
    }
}

/// SIMPLE on one port with `sentences-credential`, MUTUAL on another with
/// `sentences-mutual` (the labs' two secrets).
fn plan() -> GatewayPlan {
    let port = |port, server| GatewayPortPlan {
        port,
        servers: vec![server],
        authorization: Default::default(),
        authentication: Default::default(),
    };
    GatewayPlan {
        ports: vec![
            port(
                SIMPLE_PORT,
                server("https", ServerTlsMode::Simple, "sentences-credential"),
            ),
            port(
                MUTUAL_PORT,
                server("https-mutual", ServerTlsMode::Mutual, "sentences-mutual"),
            ),
        ],
    }
}

/// Writes a mounted secret: `<dir>/<version>/<key>` files, `..data` swapped atomically to
/// `<version>`, each key a symlink through `..data` (made once).
fn mount_secret(dir: &Path, version: &str, keys: &[(&str, Vec<u8>)]) {
    std::fs::create_dir_all(dir.join(version)).unwrap();
    for (key, bytes) in keys {
        std::fs::write(dir.join(version).join(key), bytes).unwrap();
        if std::fs::symlink_metadata(dir.join(key)).is_err() {
            symlink(Path::new("..data").join(key), dir.join(key)).unwrap();
        }
    }
    symlink(version, dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
}

/// The labs' secrets from the files of `prefix` (`""` or `"other/"`):
/// `kubectl create secret tls sentences-credential --key --cert` and
/// `kubectl create secret generic sentences-mutual --from-file=tls.key --from-file=tls.crt
/// --from-file=ca.crt`.
fn mount_lab_secrets(labs: &Labs, credentials: &Path, prefix: &str, version: &str) {
    let read = |name: &str| labs.read(&format!("{prefix}{name}"));
    mount_secret(
        &credentials.join("sentences-credential"),
        version,
        &[
            ("tls.crt", read("sentences.example.com.crt")),
            ("tls.key", read("sentences.example.com.key")),
        ],
    );
    mount_secret(
        &credentials.join("sentences-mutual"),
        version,
        &[
            ("tls.crt", read("sentences.example.com.crt")),
            ("tls.key", read("sentences.example.com.key")),
            ("ca.crt", read("example.com.crt")),
        ],
    );
}

/// A tiny HTTPS server on 127.0.0.1:0 for one plan port: every connection gets the
/// configuration `EdgeCertificates` holds at that moment; every handshake is counted in
/// `metrics` and its outcome sent to `outcomes`. Stops when dropped.
struct Edge {
    port: u16,
    outcomes: mpsc::UnboundedReceiver<&'static str>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Edge {
    async fn start(certs: EdgeCertificates, plan_port: u16, metrics: Arc<Metrics>) -> Edge {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, outcomes) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let config = certs
                    .server_config(plan_port, 0)
                    .expect("a SIMPLE/MUTUAL server");
                let (tx, metrics) = (tx.clone(), metrics.clone());
                tokio::spawn(async move {
                    let accept = TlsAcceptor::from(config).accept(tcp);
                    let outcome = match tokio::time::timeout(Duration::from_secs(10), accept).await
                    {
                        Ok(Ok(mut tls)) => {
                            let mut buf = [0u8; 1024];
                            let mut request = Vec::new();
                            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                                match tls.read(&mut buf).await {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => request.extend_from_slice(&buf[..n]),
                                }
                            }
                            let body = "sentence\n";
                            let response = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                                body.len()
                            );
                            let _ = tls.write_all(response.as_bytes()).await;
                            let _ = tls.shutdown().await;
                            "ok"
                        }
                        Ok(Err(e)) => handshake_outcome(&e),
                        Err(_) => "timeout",
                    };
                    metrics.gateway_handshake(plan_port, "https", outcome);
                    let _ = tx.send(outcome);
                });
            }
        });
        Edge {
            port,
            outcomes,
            task,
        }
    }

    async fn next_outcome(&mut self) -> &'static str {
        tokio::time::timeout(Duration::from_secs(10), self.outcomes.recv())
            .await
            .expect("the server saw the connection")
            .unwrap()
    }
}

/// The labs' curl command (run in `cwd`: the labs' directory, or `other/` for the second
/// run's files) over HTTP/1.1: the test server speaks only that, while the edge offers `h2`.
async fn lab_curl(cwd: &Path, port: u16, extra: &[&str]) -> Curl {
    curl(cwd, port, &[&["--http1.1"], extra].concat()).await
}

#[tokio::test]
async fn the_labs_secrets_serve_simple_and_mutual_to_curl() {
    let Some(labs) = Labs::make() else { return };
    let credentials = temp_dir("gateway-credentials");
    mount_lab_secrets(&labs, credentials.path(), "", "..2026_01_01");
    let metrics = Arc::new(Metrics::new(prometheus::Registry::new()));
    let certs = EdgeCertificates::load(&plan(), Some(credentials.path()), metrics.clone()).unwrap();
    let dir = labs.dir.path();

    let mut simple = Edge::start(certs.clone(), SIMPLE_PORT, metrics.clone()).await;
    let out = lab_curl(dir, simple.port, &[]).await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(out.stdout, "sentence\n");
    assert_eq!(simple.next_outcome().await, "ok");

    let mut mutual = Edge::start(certs.clone(), MUTUAL_PORT, metrics.clone()).await;
    let out = lab_curl(dir, mutual.port, CLIENT_CERT).await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(mutual.next_outcome().await, "ok");

    let out = lab_curl(dir, mutual.port, &[]).await;
    assert!(!out.ok, "{}", out.stdout);
    assert!(
        out.stderr.contains("certificate required"),
        "{}",
        out.stderr
    );
    assert_eq!(mutual.next_outcome().await, "certificate_required");

    let other = [
        "--cert",
        "other/client.example.com.crt",
        "--key",
        "other/client.example.com.key",
    ];
    let out = lab_curl(dir, mutual.port, &other).await;
    assert!(!out.ok, "{}", out.stdout);
    assert!(out.stderr.contains("unknown ca"), "{}", out.stderr);
    assert_eq!(mutual.next_outcome().await, "unknown_ca");

    let text = metrics.encode();
    let handshakes = |port: &str, outcome: &str| {
        metric_sum(
            &text,
            "outrider_gateway_tls_handshakes_total",
            &[("port", port), ("outcome", outcome)],
        )
    };
    assert_eq!(handshakes("8443", "ok"), 1.0, "{text}");
    assert_eq!(handshakes("9443", "ok"), 1.0, "{text}");
    assert_eq!(handshakes("9443", "certificate_required"), 1.0, "{text}");
    assert_eq!(handshakes("9443", "unknown_ca"), 1.0, "{text}");
}

#[tokio::test]
async fn a_new_openssl_run_swapped_into_the_secret_is_served_to_the_next_curl() {
    let Some(labs) = Labs::make() else { return };
    let credentials = temp_dir("gateway-credentials");
    mount_lab_secrets(&labs, credentials.path(), "", "..2026_01_01");
    let metrics = Arc::new(Metrics::new(prometheus::Registry::new()));
    let certs = EdgeCertificates::load(&plan(), Some(credentials.path()), metrics.clone()).unwrap();
    let dir = labs.dir.path();
    let mut simple = Edge::start(certs.clone(), SIMPLE_PORT, metrics.clone()).await;
    let mut mutual = Edge::start(certs.clone(), MUTUAL_PORT, metrics.clone()).await;

    // The served certificates are the labs' v1 ones, listed as such.
    let listed = certs.describe();
    let first = &listed[0];
    assert_eq!(first["port"], SIMPLE_PORT, "{listed:#}");
    assert_eq!(first["version"], 1, "{first:#}");
    assert_eq!(first["sans"], serde_json::json!([]), "{first:#}");
    let subject = first["subject"].as_str().unwrap();
    assert!(subject.contains("CN=sentences.example.com") && subject.contains("O=ACMEorg"));
    assert!(first["issuer"].as_str().unwrap().contains("CN=example.com"));
    assert_eq!(first["serial"], "00");
    assert!(listed[1]["ca"][0]["subject"]
        .as_str()
        .unwrap()
        .contains("O=example Inc."));

    // The second run of the labs' commands (another root of the same name) swapped in as
    // the kubelet does, and the first version removed.
    mount_lab_secrets(&labs, credentials.path(), "other/", "..2026_01_02");
    for secret in ["sentences-credential", "sentences-mutual"] {
        std::fs::remove_dir_all(credentials.path().join(secret).join("..2026_01_01")).unwrap();
    }
    certs.refresh();

    let other = dir.join("other");
    let out = lab_curl(&other, simple.port, &[]).await;
    assert!(out.ok, "the new certificate is served: {}", out.stderr);
    assert_eq!(simple.next_outcome().await, "ok");
    let out = lab_curl(dir, simple.port, &[]).await;
    assert!(!out.ok, "the old root no longer verifies it");
    simple.next_outcome().await;

    // MUTUAL now trusts the new root's clients, not the old one's.
    let out = lab_curl(&other, mutual.port, CLIENT_CERT).await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(mutual.next_outcome().await, "ok");
    let old_client = [
        "--cert",
        "../client.example.com.crt",
        "--key",
        "../client.example.com.key",
    ];
    let out = lab_curl(&other, mutual.port, &old_client).await;
    assert!(out.stderr.contains("unknown ca"), "{}", out.stderr);
    assert_eq!(mutual.next_outcome().await, "unknown_ca");

    let text = metrics.encode();
    assert_eq!(
        metric_sum(
            &text,
            "outrider_gateway_certificate_reloads_total",
            &[("result", "ok")]
        ),
        2.0,
        "{text}"
    );
}
