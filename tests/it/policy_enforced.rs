//! Policy a running sidecar enforces, beyond what `outrider check` prints: a PERMISSIVE port
//! refuses a mesh client (mesh ALPN) whose certificate is not the mesh's instead of passing it
//! through as plaintext, and a port-level DISABLE under a STRICT workload policy admits
//! plaintext on that port only.

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

#[test]
fn permissive_refuses_a_mesh_alpn_client_with_a_rogue_certificate() {
    if !tool_available("openssl") {
        return;
    }
    let app = Untouched::new();
    let mesh = Mesh::new(app.port(), "TCP", "PERMISSIVE");
    let age = mesh.sidecar("age");
    // A rogue workload: its own CA, a certificate naming a mesh identity, the mesh ALPN. It
    // trusts the mesh root, so the sidecar's certificate verifies on its side.
    let rogue = Pki::new();
    let rogue_dir = rogue.issue("rogue", "default", "sentences");
    let mesh_root = mesh.pki.ca_dir().join("root-cert.pem");
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", &mesh.age_addr().to_string()])
        .args(["-alpn", "istio", "-ign_eof"])
        .args(["-CAfile", mesh_root.to_str().unwrap()])
        .args(["-cert", rogue_dir.join("cert-chain.pem").to_str().unwrap()])
        .args(["-key", rogue_dir.join("key.pem").to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = child.stdin.take().unwrap().write_all(b"rogue-secret\n");
    let out = bounded_output(child, "openssl s_client", Duration::from_secs(20));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("Verification: OK"), "{text}");
    assert!(text.contains("alert"), "no alert from the sidecar: {text}");
    assert!(
        eventually(Duration::from_secs(3), || metric_sum(
            &age.metrics_text(),
            "outrider_tls_handshake_failures_total",
            &[("direction", "inbound"), ("reason", "unknown_issuer")]
        ) >= 1.0),
        "{text}\n{}",
        age.metrics_text()
    );
    // Not passed through as plaintext: the app saw no connection, and no plaintext client
    // was recorded.
    app.assert_no_connection();
    let m = age.metrics_text();
    assert_eq!(
        metric_sum(
            &m,
            "istio_tcp_connections_opened_total",
            &[("connection_security_policy", "none")]
        ),
        0.0,
        "{m}"
    );
    let plaintext = age.admin("/plaintext");
    assert!(!plaintext.contains("127.0.0.1"), "{plaintext}");
}

#[test]
fn port_level_disable_under_a_strict_workload_admits_plaintext_on_that_port_only() {
    let (strict_app, plain_app) = (App::echo(), App::echo());
    let pki = Pki::new();
    let dir = temp_dir("port-level");
    let (strict_in, plain_in, out) = (free_port(), free_port(), free_port());
    let yaml = format!(
        r#"apiVersion: outrider.dev/v1alpha1
kind: Mesh
metadata: {{ name: mesh }}
spec: {{ trustDomain: cluster.local, rootNamespace: istio-system }}
---
apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: {{ name: sentences, namespace: default, labels: {{ app: sentences }} }}
spec:
  serviceAccount: sentences
  address: 127.0.0.1
  ports: [ {{ name: http, port: {s_in}, targetPort: {s_app}, protocol: HTTP }} ]
  outbound: [ {{ bind: "127.0.0.1:{out}", to: "age.default:plain" }} ]
---
apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: {{ name: age, namespace: default, labels: {{ app: age }} }}
spec:
  serviceAccount: age
  address: 127.0.0.1
  ports:
    - {{ name: tcp, port: {strict_in}, targetPort: {strict_app}, protocol: TCP }}
    - {{ name: plain, port: {plain_in}, targetPort: {plain_app}, protocol: TCP }}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {{ name: default, namespace: istio-system }}
spec: {{ mtls: {{ mode: PERMISSIVE }} }}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {{ name: age-ports, namespace: default }}
spec:
  selector: {{ matchLabels: {{ app: age }} }}
  mtls: {{ mode: STRICT }}
  portLevelMtls:
    {plain_app}: {{ mode: DISABLE }}
"#,
        s_in = free_port(),
        s_app = free_port(),
        strict_app = strict_app.port,
        plain_app = plain_app.port,
    );
    std::fs::write(dir.path().join("mesh.yaml"), yaml).unwrap();
    pki.issue("age", "default", "age");
    pki.issue("sentences", "default", "sentences");
    let start = |w: &str| Sidecar::start(dir.path(), w, &pki.dir.path().join(w), &[]);
    let age = start("age");
    let sentences = start("sentences");
    let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));

    // Plaintext straight to the DISABLE port reaches the app; to the STRICT port it is reset.
    assert_eq!(round_trip(at(plain_in), b"plain").unwrap(), b"plain");
    assert_eq!(send_and_close_kind(at(strict_in), b"strict"), "reset");
    // The mesh client follows the port's mode (auto mTLS sends plaintext to DISABLE).
    assert_eq!(round_trip(at(out), b"mesh").unwrap(), b"mesh");
    let dest_none = [
        ("reporter", "destination"),
        ("connection_security_policy", "none"),
    ];
    let m = age.metrics_text();
    assert_eq!(
        metric_sum(&m, "istio_tcp_connections_opened_total", &dest_none),
        2.0,
        "{m}"
    );
    assert!(
        metric_sum(&m, "outrider_plaintext_rejected_total", &[]) >= 1.0,
        "{m}"
    );
    assert_eq!(
        metric_sum(
            &sentences.metrics_text(),
            "outrider_tls_handshakes_total",
            &[("direction", "outbound")]
        ),
        0.0
    );
}
