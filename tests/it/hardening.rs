//! Identity and origination material a sidecar reads from files: a certificate for another
//! workload is refused at start and on rotation; DestinationRule SIMPLE/MUTUAL files are
//! watched like the SVID, so replacing them takes effect without a restart.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::common::{eventually, free_port, metric_sum, round_trip, Pki, Sidecar, BIN};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

const MESH: &str = r#"apiVersion: outrider.dev/v1alpha1
kind: Mesh
metadata: { name: mesh }
spec: { trustDomain: cluster.local, rootNamespace: istio-system }
---
apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: { name: sentences, namespace: default }
spec:
  serviceAccount: sentences
  address: 127.0.0.1
  ports: []
"#;

#[test]
fn a_certificate_for_another_workload_is_refused_at_start_naming_both_ids() {
    let pki = Pki::new();
    let age = pki.issue("age", "default", "age");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), MESH).unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "--config", dir.path().to_str().unwrap()])
        .args(["--workload", "sentences"])
        .args(["--cert-dir", age.to_str().unwrap()])
        .args(["--admin-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--metrics-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--ready-addr", &format!("127.0.0.1:{}", free_port())])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A sidecar that accepted the certificate would keep running: a bounded wait, then fail.
    let exited = eventually(Duration::from_secs(10), || {
        child.try_wait().is_ok_and(|s| s.is_some())
    });
    if !exited {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        exited,
        "the sidecar started with another workload's certificate"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("spiffe://cluster.local/ns/default/sa/age")
            && stderr.contains("spiffe://cluster.local/ns/default/sa/sentences"),
        "{stderr}"
    );
}

/// Copies the three identity files of `from` over those of `to` (a rotation by hand).
fn copy_identity(from: &Path, to: &Path) {
    for f in ["cert-chain.pem", "key.pem", "root-cert.pem"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

#[test]
fn a_rotated_certificate_for_another_workload_is_refused_and_the_current_one_stays() {
    let pki = Pki::new();
    let sentences = pki.issue("sentences", "default", "sentences");
    let age = pki.issue("age", "default", "age");
    let live = tempfile::tempdir().unwrap();
    copy_identity(&sentences, live.path());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), MESH).unwrap();
    let sidecar = Sidecar::start(dir.path(), "sentences", live.path(), &[]);
    copy_identity(&age, live.path());
    assert!(
        eventually(Duration::from_secs(10), || metric_sum(
            &sidecar.metrics_text(),
            "outrider_cert_rotation_failures_total",
            &[]
        ) >= 1.0),
        "{}",
        sidecar.logs()
    );
    let certs = sidecar.admin("/certs");
    assert!(
        certs.contains("\"spiffe_id\": \"spiffe://cluster.local/ns/default/sa/sentences\""),
        "{certs}"
    );
    assert!(
        sidecar
            .logs()
            .contains("the certificate is for spiffe://cluster.local/ns/default/sa/age, but this workload is spiffe://cluster.local/ns/default/sa/sentences"),
        "{}",
        sidecar.logs()
    );
}

/// A TLS server (not a mesh sidecar) that requires a client certificate from `client_ca`
/// and answers each connection with `hello over tls`.
fn tls_server(server: &Path, client_ca: &Path) -> u16 {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(server.join("cert-chain.pem"))
            .unwrap()
            .map(Result::unwrap)
            .collect();
    let key = PrivateKeyDer::from_pem_file(server.join("key.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(client_ca.join("root-cert.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let config = config.clone();
            std::thread::spawn(move || {
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
                let Ok(conn) = rustls::ServerConnection::new(config) else {
                    return;
                };
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                let mut buf = [0u8; 64];
                // The handshake completes on the first read (the client's request).
                if tls.read(&mut buf).is_ok() {
                    let _ = tls.write_all(b"hello over tls");
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                }
            });
        }
    });
    port
}

#[test]
fn replaced_destination_rule_certificate_files_take_effect_without_a_restart() {
    // The external service's own PKI (server and the client certificates it accepts), and
    // an unrelated one whose certificates it refuses.
    let external = Pki::new();
    let other = Pki::new();
    let server = external.issue_with_dns("server", "db", "db", "localhost");
    let good_client = external.issue("good-client", "default", "sentences");
    let bad_client = other.issue("bad-client", "default", "sentences");
    let db = tls_server(&server, &server);
    let mesh_pki = Pki::new();
    let certs = mesh_pki.issue("sentences", "default", "sentences");

    // The files the DestinationRule names: first a CA that does not sign the server.
    let files = tempfile::tempdir().unwrap();
    let ca_file = files.path().join("ca.pem");
    let cert_file = files.path().join("client.pem");
    let key_file = files.path().join("client-key.pem");
    std::fs::copy(other.ca_dir().join("root-cert.pem"), &ca_file).unwrap();
    std::fs::copy(good_client.join("cert-chain.pem"), &cert_file).unwrap();
    std::fs::copy(good_client.join("key.pem"), &key_file).unwrap();
    let bind = free_port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mesh.yaml"),
        format!(
            "{MESH}  outbound:\n    - {{ bind: \"127.0.0.1:{bind}\", to: \"127.0.0.1:{db}\" }}\n---\napiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata: {{ name: db, namespace: default }}\nspec:\n  host: 127.0.0.1\n  trafficPolicy:\n    tls: {{ mode: MUTUAL, sni: localhost, caCertificates: {}, clientCertificate: {}, privateKey: {} }}\n",
            ca_file.display(),
            cert_file.display(),
            key_file.display()
        ),
    )
    .unwrap();
    let sidecar = Sidecar::start(dir.path(), "sentences", &certs, &[]);
    let addr = SocketAddr::from(([127, 0, 0, 1], bind));
    let answers = || round_trip(addr, b"hi").is_ok_and(|b| b == b"hello over tls");

    assert!(!answers(), "a server signed by another CA must be refused");
    let metrics = sidecar.metrics_text();
    assert!(
        metric_sum(
            &metrics,
            "outrider_tls_handshake_failures_total",
            // Both test CAs have the same subject: webpki finds the wrong root by name and
            // reports its signature as bad.
            &[("direction", "outbound"), ("reason", "bad_signature")]
        ) >= 1.0,
        "{metrics}\n{}",
        sidecar.logs()
    );
    // The right CA file dropped in: new connections verify the server and get through.
    std::fs::copy(external.ca_dir().join("root-cert.pem"), &ca_file).unwrap();
    assert!(
        eventually(Duration::from_secs(10), answers),
        "the replaced caCertificates file was not picked up: {}",
        sidecar.logs()
    );
    // A client certificate the server does not accept: refused by the server.
    std::fs::copy(bad_client.join("cert-chain.pem"), &cert_file).unwrap();
    std::fs::copy(bad_client.join("key.pem"), &key_file).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || !answers()),
        "the replaced clientCertificate was not picked up"
    );
    // And back: the accepted certificate works again, still without a restart.
    std::fs::copy(good_client.join("cert-chain.pem"), &cert_file).unwrap();
    std::fs::copy(good_client.join("key.pem"), &key_file).unwrap();
    assert!(eventually(Duration::from_secs(10), answers));
    assert!(sidecar.logs().contains("origination certificates reloaded"));
}

/// The outbound access log line counts what came from the app as `received` and what went
/// back to it as `sent` (the review found them swapped).
#[test]
fn the_outbound_access_log_counts_received_from_the_app_and_sent_to_it() {
    // An app that answers every request with exactly 3 bytes.
    let app = crate::common::App::spawn(|mut s| {
        let mut buf = [0u8; 4096];
        let mut seen = 0;
        while seen < 100 {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => seen += n,
            }
        }
        let _ = s.write_all(b"ok\n");
    });
    let bind = free_port();
    let pki = Pki::new();
    let certs = pki.issue("sentences", "default", "sentences");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mesh.yaml"),
        format!(
            "{MESH}  outbound:\n    - {{ bind: \"127.0.0.1:{bind}\", to: \"127.0.0.1:{}\" }}\n",
            app.port
        ),
    )
    .unwrap();
    let sidecar = Sidecar::start(dir.path(), "sentences", &certs, &[]);
    let back = round_trip(SocketAddr::from(([127, 0, 0, 1], bind)), &[b'x'; 100]).unwrap();
    assert_eq!(back, b"ok\n");
    assert!(
        eventually(Duration::from_secs(5), || sidecar
            .logs()
            .lines()
            .any(|l| l.contains("direction=\"outbound\"")
                && l.contains("received=100")
                && l.contains("sent=3"))),
        "{}",
        sidecar.logs()
    );
}
