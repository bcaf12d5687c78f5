//! The labs' subset step: `name` runs as v1 and v2; a DestinationRule gives subset v1 TLS DISABLE
//! and v2 ISTIO_MUTUAL, a VirtualService routes to both. Under PERMISSIVE the destination
//! sidecars report `none` for v1 and `mutual_tls` for v2; with v1 STRICT, plaintext to v1
//! fails while v2 keeps working.
//!
//! `name`'s port is declared TCP: these tests count connections of raw echo traffic (an HTTP
//! port is served at L7 and closes non-HTTP bytes); the VirtualService's `http` routes still
//! apply to a TCP port that has no `tcp` routes (the config falls back to them).

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::*;

pub struct NameMesh {
    pub pki: Pki,
    pub dir: tempfile::TempDir,
    pub v1_in: u16,
    pub v2_in: u16,
    pub out: u16,
}

impl NameMesh {
    pub fn new(v1_app: u16, v2_app: u16, weights: Option<(u32, u32)>, v1_strict: bool) -> NameMesh {
        let pki = Pki::new();
        let dir = tempfile::tempdir().unwrap();
        let (v1_in, v2_in, out) = (free_port(), free_port(), free_port());
        let mut yaml = format!(
            r#"apiVersion: outrider.dev/v1alpha1
kind: Mesh
metadata: {{ name: mesh }}
spec: {{ trustDomain: cluster.local }}
---
apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: {{ name: sentences, namespace: default, labels: {{ app: sentences }} }}
spec:
  serviceAccount: sentences
  address: 127.0.0.1
  ports: [ {{ name: http, port: {s_in}, targetPort: {s_app}, protocol: HTTP }} ]
  outbound: [ {{ bind: "127.0.0.1:{out}", to: "name.default:http" }} ]
---
apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: {{ name: name-v1, namespace: default, labels: {{ app: name, version: v1 }} }}
spec:
  serviceAccount: name
  address: 127.0.0.1
  ports: [ {{ name: http, port: {v1_in}, targetPort: {v1_app}, protocol: TCP }} ]
---
apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: {{ name: name-v2, namespace: default, labels: {{ app: name, version: v2 }} }}
spec:
  serviceAccount: name
  address: 127.0.0.1
  ports: [ {{ name: http, port: {v2_in}, targetPort: {v2_app}, protocol: TCP }} ]
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {{ name: default, namespace: istio-system }}
spec: {{ mtls: {{ mode: PERMISSIVE }} }}
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {{ name: name, namespace: default }}
spec:
  host: name
  subsets:
    - name: v1
      labels: {{ version: v1 }}
      trafficPolicy: {{ tls: {{ mode: DISABLE }} }}
    - name: v2
      labels: {{ version: v2 }}
      trafficPolicy: {{ tls: {{ mode: ISTIO_MUTUAL }} }}
"#,
            s_in = free_port(),
            s_app = free_port(),
        );
        if let Some((w1, w2)) = weights {
            yaml.push_str(&format!(
                r#"---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {{ name: name, namespace: default }}
spec:
  hosts: [ name ]
  http:
    - route:
        - {{ destination: {{ host: name, subset: v1 }}, weight: {w1} }}
        - {{ destination: {{ host: name, subset: v2 }}, weight: {w2} }}
"#
            ));
        }
        if v1_strict {
            yaml.push_str(
                "---\napiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: { name: name-v1, namespace: default }\nspec:\n  selector: { matchLabels: { app: name, version: v1 } }\n  mtls: { mode: STRICT }\n",
            );
        }
        std::fs::write(dir.path().join("mesh.yaml"), yaml).unwrap();
        pki.issue("sentences", "default", "sentences");
        pki.issue("name", "default", "name");
        NameMesh {
            pki,
            dir,
            v1_in,
            v2_in,
            out,
        }
    }

    pub fn sidecar(&self, workload: &str, identity: &str) -> Sidecar {
        Sidecar::start(
            self.dir.path(),
            workload,
            &self.pki.dir.path().join(identity),
            &[],
        )
    }
}

#[test]
fn subset_v1_is_plaintext_and_v2_is_mutual_tls() {
    let (a1, a2) = (App::echo(), App::echo());
    let mesh = NameMesh::new(a1.port, a2.port, Some((50, 50)), false);
    let v1 = mesh.sidecar("name-v1", "name");
    let v2 = mesh.sidecar("name-v2", "name");
    let _s = mesh.sidecar("sentences", "sentences");
    let out = SocketAddr::from(([127, 0, 0, 1], mesh.out));
    for i in 0..30 {
        let msg = format!("request {i}");
        assert_eq!(round_trip(out, msg.as_bytes()).unwrap(), msg.as_bytes());
    }
    let dest = |policy| {
        [
            ("reporter", "destination"),
            ("connection_security_policy", policy),
        ]
    };
    assert!(eventually(Duration::from_secs(3), || {
        let (m1, m2) = (v1.metrics_text(), v2.metrics_text());
        metric_sum(&m1, "istio_tcp_connections_opened_total", &dest("none")) >= 1.0
            && metric_sum(
                &m2,
                "istio_tcp_connections_opened_total",
                &dest("mutual_tls"),
            ) >= 1.0
    }));
    let (m1, m2) = (v1.metrics_text(), v2.metrics_text());
    assert_eq!(
        metric_sum(
            &m1,
            "istio_tcp_connections_opened_total",
            &dest("mutual_tls")
        ),
        0.0,
        "{m1}"
    );
    assert_eq!(
        metric_sum(&m2, "istio_tcp_connections_opened_total", &dest("none")),
        0.0,
        "{m2}"
    );
    let total = metric_sum(&m1, "istio_tcp_connections_opened_total", &dest("none"))
        + metric_sum(
            &m2,
            "istio_tcp_connections_opened_total",
            &dest("mutual_tls"),
        );
    assert_eq!(total, 30.0);
    // v2 sees who called: the sentences identity.
    assert!(
        m2.contains(r#"source_principal="spiffe://cluster.local/ns/default/sa/sentences""#),
        "{m2}"
    );
    let dump = _s.admin("/config_dump");
    assert!(
        dump.contains("\"subset\": \"v1\"") && dump.contains("DISABLE"),
        "{dump}"
    );
}

#[test]
fn disable_towards_a_strict_workload_fails_while_mtls_to_the_other_subset_works() {
    let (a1, a2) = (App::echo(), App::echo());
    let mesh = NameMesh::new(a1.port, a2.port, Some((50, 50)), true);
    let v1 = mesh.sidecar("name-v1", "name");
    let v2 = mesh.sidecar("name-v2", "name");
    let s = mesh.sidecar("sentences", "sentences");
    let out = SocketAddr::from(([127, 0, 0, 1], mesh.out));
    // Half the routes go to v1 in plaintext (DISABLE), and v1 is STRICT: those connections are
    // closed; the other half go to v2 over mTLS and are echoed.
    let (mut echoed, mut closed) = (0.0, 0.0);
    for i in 0..30 {
        let msg = format!("request {i}");
        // v2's app echoes; v1's STRICT closes (the client sidecar then closes the app's
        // connection).
        match send_and_close_kind(out, msg.as_bytes()).as_str() {
            "data" => echoed += 1.0,
            "reset" | "eof" => closed += 1.0,
            other => panic!("neither an echo nor a close: {other}"),
        }
    }
    assert!(
        echoed >= 1.0 && closed >= 1.0,
        "echoed {echoed}, closed {closed}"
    );
    // Every close is v1's STRICT refusing plaintext; every echo went to v2 over mTLS.
    let dest = |policy| {
        [
            ("reporter", "destination"),
            ("connection_security_policy", policy),
        ]
    };
    assert!(
        eventually(Duration::from_secs(3), || metric_sum(
            &v1.metrics_text(),
            "outrider_plaintext_rejected_total",
            &[]
        ) == closed),
        "{}",
        v1.metrics_text()
    );
    let m1 = v1.metrics_text();
    assert_eq!(
        metric_sum(
            &m1,
            "istio_tcp_connections_opened_total",
            &dest("mutual_tls")
        ),
        0.0,
        "{m1}"
    );
    assert!(
        eventually(Duration::from_secs(3), || metric_sum(
            &v2.metrics_text(),
            "istio_tcp_connections_opened_total",
            &dest("mutual_tls")
        ) == echoed),
        "{}",
        v2.metrics_text()
    );
    let m2 = v2.metrics_text();
    assert_eq!(
        metric_sum(&m2, "istio_tcp_connections_opened_total", &dest("none")),
        0.0,
        "{m2}"
    );
    assert!(
        m2.contains(r#"source_principal="spiffe://cluster.local/ns/default/sa/sentences""#),
        "{m2}"
    );
    assert_eq!(
        metric_sum(
            &s.metrics_text(),
            "outrider_tls_handshakes_total",
            &[("direction", "outbound")]
        ),
        echoed
    );
    // A plaintext client straight to v1 is reset too; v2 (PERMISSIVE) still takes it.
    let direct_v1 = send_and_close_kind(SocketAddr::from(([127, 0, 0, 1], mesh.v1_in)), b"v1");
    assert_eq!(direct_v1, "reset");
    assert_eq!(
        round_trip(SocketAddr::from(([127, 0, 0, 1], mesh.v2_in)), b"v2").unwrap(),
        b"v2"
    );
}

#[test]
fn without_routes_connections_spread_over_endpoints_and_skip_one_that_refuses() {
    let (a1, a2) = (App::echo(), App::echo());
    let mesh = NameMesh::new(a1.port, a2.port, None, false);
    let v1 = mesh.sidecar("name-v1", "name");
    let v2 = mesh.sidecar("name-v2", "name");
    let s = mesh.sidecar("sentences", "sentences");
    let out = SocketAddr::from(([127, 0, 0, 1], mesh.out));
    let send = |n: usize| {
        for i in 0..n {
            let msg = format!("request {i}");
            assert_eq!(
                round_trip(out, msg.as_bytes()).unwrap(),
                msg.as_bytes(),
                "{}",
                s.logs()
            );
        }
    };
    let mtls = [
        ("reporter", "destination"),
        ("connection_security_policy", "mutual_tls"),
    ];
    let opened = |sidecar: &Sidecar| {
        metric_sum(
            &sidecar.metrics_text(),
            "istio_tcp_connections_opened_total",
            &mtls,
        )
    };
    // Both healthy endpoints get connections.
    send(20);
    let (n1, n2) = (opened(&v1), opened(&v2));
    assert!(n1 >= 1.0 && n2 >= 1.0, "v1 got {n1}, v2 got {n2}");
    assert_eq!(n1 + n2, 20.0);
    // name-v1's sidecar stops: its endpoint refuses connections, and every new one still
    // reaches v2.
    drop(v1);
    send(20);
    assert_eq!(opened(&v2), n2 + 20.0);
    let sm = s.metrics_text();
    assert!(
        metric_sum(
            &sm,
            "outrider_upstream_failures_total",
            &[("reason", "connect_failed")]
        ) >= 1.0,
        "{sm}"
    );
}
