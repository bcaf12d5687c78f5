//! Secure naming end to end: a client sidecar whose destination is served by a valid mesh
//! certificate (same CA) of another service account than the destination's refuses the
//! server, counts `identity_mismatch`, and never forwards a byte: the app behind the impostor
//! sees no connection.

use std::time::Duration;

use crate::common::*;

/// The client sidecar counted a refused server of the wrong identity, and the impostor's
/// sidecar saw the handshake fail (so it is done with the connection before the app is
/// checked).
pub fn assert_mismatch_counted(client: &Sidecar, impostor: &Sidecar) {
    assert!(
        eventually(Duration::from_secs(5), || metric_sum(
            &client.metrics_text(),
            "outrider_tls_handshake_failures_total",
            &[("direction", "outbound"), ("reason", "identity_mismatch")]
        ) >= 1.0),
        "{}",
        client.metrics_text()
    );
    assert!(
        eventually(Duration::from_secs(5), || metric_sum(
            &impostor.metrics_text(),
            "outrider_tls_handshake_failures_total",
            &[("direction", "inbound")]
        ) >= 1.0),
        "{}",
        impostor.metrics_text()
    );
    let m = client.metrics_text();
    assert_eq!(
        metric_sum(
            &m,
            "outrider_tls_handshakes_total",
            &[("direction", "outbound")]
        ),
        0.0,
        "{m}"
    );
}

/// A mesh with one workload, `default/impostor`, listening on `port` for an app on `app`,
/// under a PERMISSIVE policy (so a refused client is the client's doing, not the policy's).
pub fn impostor_yaml(port: u16, app: u16) -> String {
    format!(
        r#"apiVersion: outrider.dev/v1alpha1
kind: Mesh
metadata: {{ name: mesh }}
spec: {{ trustDomain: cluster.local, rootNamespace: istio-system }}
---
apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: {{ name: impostor, namespace: default, labels: {{ app: impostor }} }}
spec:
  serviceAccount: impostor
  address: 127.0.0.1
  ports:
    - {{ name: tcp, port: {port}, targetPort: {app}, protocol: TCP }}
---
{}"#,
        policy("PERMISSIVE")
    )
}

#[test]
fn a_destination_serving_another_service_accounts_certificate_is_refused_and_gets_nothing() {
    let app = Untouched::new();
    let mesh = Mesh::new(app.port(), "TCP", "STRICT");
    // A genuine certificate from the mesh CA, for a service account that is not age's.
    let impostor_certs = mesh.pki.issue("impostor", "default", "impostor");
    // Its sidecar has a configuration of its own in which it is the `impostor` workload on
    // the address and port the mesh knows as age's (a squatter on age's endpoint).
    let impostor_config = temp_dir("impostor-config");
    std::fs::write(
        impostor_config.path().join("mesh.yaml"),
        impostor_yaml(mesh.age_in, app.port()),
    )
    .unwrap();
    let impostor = Sidecar::start(impostor_config.path(), "impostor", &impostor_certs, &[]);
    let sentences = mesh.sidecar("sentences");

    let kind = send_and_close_kind(mesh.sentences_out_addr(), b"secret");
    assert_eq!(kind, "reset", "the app's connection is reset");
    assert_mismatch_counted(&sentences, &impostor);
    app.assert_no_connection();
}

#[test]
fn through_a_destination_rule_subset_the_wrong_service_account_is_refused_too() {
    // Every route goes to subset v2 (ISTIO_MUTUAL), whose endpoint is squatted by a sidecar
    // with a genuine certificate for `impostor` instead of `name`.
    let (v1_app, v2_app) = (App::echo(), Untouched::new());
    let mesh =
        crate::sidecar_subsets::NameMesh::new(v1_app.port, v2_app.port(), Some((0, 100)), false);
    let impostor_certs = mesh.pki.issue("impostor", "default", "impostor");
    let impostor_config = temp_dir("impostor-subset-config");
    std::fs::write(
        impostor_config.path().join("mesh.yaml"),
        impostor_yaml(mesh.v2_in, v2_app.port()),
    )
    .unwrap();
    let impostor = Sidecar::start(impostor_config.path(), "impostor", &impostor_certs, &[]);
    let sentences = mesh.sidecar("sentences", "sentences");
    let out = std::net::SocketAddr::from(([127, 0, 0, 1], mesh.out));

    let kind = send_and_close_kind(out, b"secret");
    assert_eq!(kind, "reset", "the app's connection is reset");
    assert_mismatch_counted(&sentences, &impostor);
    v2_app.assert_no_connection();
    // The route did pick the mTLS subset: the failure is secure naming, not a plaintext miss.
    let dump = sentences.admin("/config_dump");
    assert!(dump.contains("ISTIO_MUTUAL"), "{dump}");
}
