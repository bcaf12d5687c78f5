//! A service with several endpoints: connections spread over all of them, and session
//! resumption works per endpoint (each endpoint's tickets are offered to that endpoint only),
//! as the handshake-kind metric shows.

use std::net::SocketAddr;

use crate::common::{free_port, metric_sum, round_trip, App, Pki, Sidecar};

/// The loopback address of endpoint `i` (Linux routes all of 127/8 to `lo`).
fn host(i: usize) -> &'static str {
    ["127.0.0.2", "127.0.0.3", "127.0.0.4"][i]
}

#[test]
fn three_endpoints_of_one_service_resume_their_own_sessions() {
    let apps = [App::echo(), App::echo(), App::echo()];
    // Real services have endpoints on several hosts and one port: one SNI for all of them.
    let port = free_port();
    let bind = free_port();
    let pki = Pki::new();
    let client_certs = pki.issue("sentences", "default", "sentences");
    let server_certs = pki.issue("age", "default", "age");
    let dir = crate::common::temp_dir("endpoints");
    let mut yaml = format!(
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
  ports: []
  outbound:
    - {{ bind: "127.0.0.1:{bind}", to: "age.default:tcp" }}
"#
    );
    for (i, app) in apps.iter().enumerate() {
        yaml.push_str(&format!(
            "---\napiVersion: outrider.dev/v1alpha1\nkind: Workload\nmetadata: {{ name: age-{i}, namespace: default, labels: {{ app: age }} }}\nspec:\n  serviceAccount: age\n  address: {}\n  ports:\n    - {{ name: tcp, port: {port}, targetPort: {}, protocol: TCP }}\n",
            host(i),
            app.port
        ));
    }
    std::fs::write(dir.path().join("mesh.yaml"), &yaml).unwrap();
    let servers: Vec<Sidecar> = (0..3)
        .map(|i| {
            Sidecar::start(
                dir.path(),
                &format!("age-{i}"),
                &server_certs,
                &["--inbound-ip", host(i)],
            )
        })
        .collect();
    let client = Sidecar::start(dir.path(), "sentences", &client_certs, &[]);

    let addr = SocketAddr::from(([127, 0, 0, 1], bind));
    let connections = 60;
    for i in 0..connections {
        let msg = format!("connection {i}");
        assert_eq!(round_trip(addr, msg.as_bytes()).unwrap(), msg.as_bytes());
    }

    let metrics = client.metrics_text();
    let kind = |k: &str| {
        metric_sum(
            &metrics,
            "outrider_tls_handshakes_total",
            &[("direction", "outbound"), ("kind", k)],
        )
    };
    let (full, resumed) = (kind("full"), kind("resumed"));
    assert_eq!(full + resumed, connections as f64, "{metrics}");
    // One full handshake per endpoint to start with; every later connection resumes a session
    // of the endpoint it reaches (a little slack for tickets still in flight).
    assert!(
        full <= 6.0 && resumed >= 54.0,
        "full {full}, resumed {resumed}: {metrics}"
    );
    // A reload that keeps the endpoints keeps their tickets: the next connections resume.
    let reloads =
        |m: &str| metric_sum(m, "outrider_config_reloads_total", &[("result", "success")]);
    let before = reloads(&metrics);
    let extra_bind = free_port();
    std::fs::write(
        dir.path().join("mesh.yaml"),
        yaml.replace(
            "  outbound:\n",
            &format!("  outbound:\n    - {{ bind: \"127.0.0.1:{extra_bind}\", to: \"age.default:tcp\" }}\n"),
        ),
    )
    .unwrap();
    assert!(crate::common::eventually(
        std::time::Duration::from_secs(10),
        || reloads(&client.metrics_text()) > before
    ));
    for i in 0..9 {
        let msg = format!("after reload {i}");
        assert_eq!(round_trip(addr, msg.as_bytes()).unwrap(), msg.as_bytes());
    }
    let after = client.metrics_text();
    let full_after = metric_sum(
        &after,
        "outrider_tls_handshakes_total",
        &[("direction", "outbound"), ("kind", "full")],
    );
    assert_eq!(full_after, full, "a reload threw the tickets away: {after}");

    for server in &servers {
        let m = server.metrics_text();
        let served = metric_sum(
            &m,
            "outrider_tls_handshakes_total",
            &[("direction", "inbound")],
        );
        assert!(served >= 15.0, "an endpoint got only {served} connections");
    }
}

/// An endpoint whose address is a host name (docker-compose's `age`): resolved in the
/// background (`--dns-refresh`), every connection reaches it.
#[test]
fn an_endpoint_addressed_by_name_is_reached() {
    let app = App::echo();
    let (port, bind) = (free_port(), free_port());
    let pki = Pki::new();
    let dir = crate::common::temp_dir("endpoint-name");
    std::fs::write(
        dir.path().join("mesh.yaml"),
        format!(
            r#"apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: {{ name: sentences, namespace: default }}
spec:
  serviceAccount: sentences
  address: localhost
  ports: []
  outbound:
    - {{ bind: "127.0.0.1:{bind}", to: "age.default:tcp" }}
---
apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: {{ name: age, namespace: default }}
spec:
  serviceAccount: age
  address: localhost
  ports:
    - {{ name: tcp, port: {port}, targetPort: {}, protocol: TCP }}
"#,
            app.port
        ),
    )
    .unwrap();
    let _age = Sidecar::start(dir.path(), "age", &pki.issue("age", "default", "age"), &[]);
    let client = Sidecar::start(
        dir.path(),
        "sentences",
        &pki.issue("sentences", "default", "sentences"),
        &["--dns-refresh", "200ms"],
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], bind));
    for i in 0..20 {
        let msg = format!("by name {i}");
        assert_eq!(round_trip(addr, msg.as_bytes()).unwrap(), msg.as_bytes());
    }
    let metrics = client.metrics_text();
    assert_eq!(
        metric_sum(&metrics, "outrider_upstream_failures_total", &[]),
        0.0,
        "{metrics}"
    );
}
