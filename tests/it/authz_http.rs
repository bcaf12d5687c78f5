//! AuthorizationPolicy on an HTTP port, enforced per request by the L7 engine of real sidecars:
//! an allowed request reaches the app; a denied one is answered `403` with Envoy's body
//! `RBAC: access denied` and never reaches the app; paths match after normalization; a
//! plaintext client never matches `principals`; denials are counted by policy and in
//! `istio_requests_total` with `response_flags="RBAC"`.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::Mutex;

use crate::common::*;

/// Request targets the app received (one test in this module uses it).
static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// An HTTP/1.1 app that records each request's target and answers `200 ok`.
fn recording_app() -> App {
    App::spawn(|stream: TcpStream| {
        let mut out = stream.try_clone().unwrap();
        let mut reader = BufReader::new(stream);
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim_end().is_empty() {
                    break;
                }
            }
            if let Some(target) = line.split_whitespace().nth(1) {
                SEEN.lock().unwrap().push(target.to_string());
            }
            if out
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .is_err()
            {
                return;
            }
        }
    })
}

const POLICIES: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: sentences-reads-api, namespace: default }
spec:
  selector: { matchLabels: { app: age } }
  action: ALLOW
  rules:
    - from: [{ source: { principals: [cluster.local/ns/default/sa/sentences] } }]
      to: [{ operation: { methods: [GET], paths: ["/api/*"] } }]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: no-admin, namespace: default }
spec:
  selector: { matchLabels: { app: age } }
  action: DENY
  rules:
    - to: [{ operation: { paths: ["/api/admin"] } }]
"#;

#[test]
fn http_requests_are_authorized_one_by_one_with_envoys_403() {
    let app = recording_app();
    let mesh = Mesh::new(app.port, "HTTP", "PERMISSIVE");
    replace_file(&mesh.config().join("authz.yaml"), POLICIES);
    let age = mesh.sidecar("age");
    let _sentences = mesh.sidecar("sentences");
    let through = mesh.sentences_out_addr();

    assert_eq!(http_get(through, "/api/hello").unwrap(), (200, "ok".into()));
    let denied = (403, "RBAC: access denied".to_string());
    // DENY wins over ALLOW; the path matches after normalization (dot segments resolved).
    assert_eq!(http_get(through, "/api/admin").unwrap(), denied);
    assert_eq!(http_get(through, "/api/hello/../admin").unwrap(), denied);
    // Nothing allows another path for sentences.
    assert_eq!(http_get(through, "/other").unwrap(), denied);
    // A plaintext client (PERMISSIVE admits it) has no principal: the ALLOW never matches.
    assert_eq!(http_get(mesh.age_addr(), "/api/hello").unwrap(), denied);

    assert_eq!(
        *SEEN.lock().unwrap(),
        ["/api/hello"],
        "only the allowed request reached the app"
    );
    let m = age.metrics_text();
    let policy = |p: &str| {
        metric_sum(
            &m,
            "outrider_authz_denied_total",
            &[("port", &mesh.age_in.to_string()), ("policy", p)],
        )
    };
    assert_eq!(policy("default/no-admin"), 2.0, "{m}");
    assert_eq!(policy("no ALLOW policy matched"), 2.0, "{m}");
    assert_eq!(
        metric_sum(
            &m,
            "istio_requests_total",
            &[
                ("reporter", "destination"),
                ("response_code", "403"),
                ("response_flags", "RBAC")
            ]
        ),
        4.0,
        "{m}"
    );
}
