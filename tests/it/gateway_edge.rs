//! The gateway at the edge of the labs' storylines: PASSTHROUGH to a mesh workload whose app
//! terminates its own TLS (`openssl s_server` behind a sidecar, reached over mTLS from the
//! gateway), the JWT storyline with RequestAuthentication and AuthorizationPolicy selecting
//! the gateway (`istio: ingressgateway`), and bad input on a TLS port (garbage, plaintext
//! HTTP, a silent client) that is closed and counted while the gateway keeps serving.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::auth_sample::{AuthIssuer, CERTS_PATH};
use crate::common::*;
use crate::gateway::{
    assert_requests_from_gateway, curl_http, curl_https, served_cert, Edge, LabCerts, GATEWAY_ID,
};

/// A process the test started; killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn passthrough_reaches_the_apps_own_tls_through_the_mesh() {
    let Some(labs) = LabCerts::make() else { return };
    labs.leaf("secure.example.com", "secure.example.com", 5, None);
    // The app terminates TLS itself with its own certificate.
    let app_port = free_port();
    let app = Proc(
        Command::new("openssl")
            .current_dir(labs.dir())
            .args(["s_server", "-accept", &format!("127.0.0.1:{app_port}")])
            .args([
                "-cert",
                "secure.example.com.crt",
                "-key",
                "secure.example.com.key",
            ])
            .args(["-www", "-quiet"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server starts"),
    );
    let app_addr = SocketAddr::from(([127, 0, 0, 1], app_port));
    assert!(
        eventually(Duration::from_secs(15), || TcpStream::connect(app_addr)
            .is_ok()),
        "openssl s_server never listened"
    );

    let edge = Edge::new();
    let (secure_port, port) = (free_port(), free_port());
    let secure_certs = edge.pki.issue("secure", "default", "secure");
    edge.write(
        "secure.yaml",
        &format!(
            r#"apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: {{ name: secure, namespace: default, labels: {{ app: secure }} }}
spec:
  serviceAccount: secure
  address: 127.0.0.1
  ports:
    - {{ name: tls, port: {secure_port}, targetPort: {app_port}, protocol: TLS }}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{ name: passthrough, namespace: default }}
spec:
  selector: {{ istio: ingressgateway }}
  servers:
    - port: {{ number: {port}, name: tls-passthrough, protocol: TLS }}
      hosts: [ "secure.example.com" ]
      tls: {{ mode: PASSTHROUGH }}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: secure, namespace: default }}
spec:
  hosts: [ "secure.example.com" ]
  gateways: [ passthrough ]
  tls:
    - match: [ {{ port: {port}, sniHosts: [ "secure.example.com" ] }} ]
      route:
        - destination: {{ host: secure, port: {{ number: {secure_port} }} }}
"#
        ),
    );
    let secure = Sidecar::start(edge.config(), "secure", &secure_certs, &[]);
    let run = edge.start(&[]);

    // curl reaches s_server's status page and accepts its certificate by name: the gateway
    // holds no certificate for this host, the TLS is the app's.
    let r = curl_https(&labs, "secure.example.com", port, "/", &[]);
    assert!(r.ok, "{r:?}\ngateway: {}", run.gateway.logs());
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("s_server"), "not s_server's page: {r:?}");
    assert_eq!(
        served_cert(labs.dir(), port, Some("secure.example.com")),
        Ok(("CN=secure.example.com,O=ACMEorg".into(), "5".into()))
    );

    // The bytes crossed the mesh over mTLS from the gateway's identity.
    let from_gateway = [
        ("reporter", "destination"),
        ("connection_security_policy", "mutual_tls"),
        ("source_principal", GATEWAY_ID),
    ];
    assert!(
        eventually(Duration::from_secs(5), || metric_sum(
            &secure.metrics_text(),
            "istio_tcp_connections_opened_total",
            &from_gateway
        ) >= 2.0),
        "{}",
        secure.metrics_text()
    );

    // An SNI the routes do not list goes nowhere.
    let other = curl_https(&labs, "other.example.com", port, "/", &["-k"]);
    assert!(!other.ok, "{other:?}");
    drop(app);
}

/// The labs' AuthorizationPolicy, applied to the gateway: a request principal on every path
/// but `/health_check`.
const REQUIRE_JWT_AT_GATEWAY: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: require-jwt
  namespace: istio-system
spec:
  selector:
    matchLabels:
      istio: ingressgateway
  action: ALLOW
  rules:
  - from:
    - source:
        requestPrincipals: ["*"]
    to:
    - operation:
        notPaths: ["/health_check"]
  - to:
    - operation:
        paths: ["/health_check"]
"#;

/// The same token with one signature character changed (not the last one: its low bits are
/// base64 padding).
fn tamper(token: &str) -> String {
    let mut bytes = token.as_bytes().to_vec();
    let i = bytes.len() - 10;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

#[test]
fn jwt_storyline_at_the_gateway() {
    if !tool_available("curl") {
        return;
    }
    let cwd = temp_dir("gateway-jwt");
    let auth = AuthIssuer::start(&[]);
    let issuer = auth.url("/auth/realms/mesh");
    let jwks = auth.url(CERTS_PATH);
    let edge = Edge::new();
    let port = free_port();
    edge.write(
        "gateway.yaml",
        &format!(
            r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{ name: sentences-gateway, namespace: default }}
spec:
  selector: {{ istio: ingressgateway }}
  servers:
    - port: {{ number: {port}, name: http, protocol: HTTP }}
      hosts: [ "sentences.example.com" ]
---
{vs}---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{ name: jwt-auth, namespace: istio-system }}
spec:
  selector: {{ matchLabels: {{ istio: ingressgateway }} }}
  jwtRules:
  - issuer: "{issuer}"
    jwksUri: "{jwks}"
---
{REQUIRE_JWT_AT_GATEWAY}"#,
            vs = edge.route_all_to_sentences(
                "sentences",
                "sentences.example.com",
                "sentences-gateway"
            ),
        ),
    );
    let run = edge.start(&[]);
    let get = |path: &str, token: Option<&str>| {
        let bearer = token.map(|t| format!("Authorization: Bearer {t}"));
        let extra: Vec<&str> = match &bearer {
            Some(b) => vec!["-H", b.as_str()],
            None => vec![],
        };
        curl_http(cwd.path(), "sentences.example.com", port, path, &extra)
    };

    // The keys are fetched off the request path: wait until alice's token is accepted.
    let alice = auth.token("alice");
    let mut last = None;
    let accepted = eventually(Duration::from_secs(20), || {
        let r = get("/", Some(&alice));
        let ok = r.status == 200;
        last = Some(r);
        ok
    });
    assert!(
        accepted,
        "alice's token was never accepted: {last:?}\ngateway: {}",
        run.gateway.logs()
    );
    assert_eq!(last.unwrap().echo().app, "sentences");

    let r = get("/health_check", None);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.echo().path(), "/health_check");

    // The gateway, not the app, answers: the bodies are Envoy's, not the echo.
    let r = get("/", None);
    assert_eq!(
        (r.status, r.body.as_str()),
        (403, "RBAC: access denied"),
        "{r:?}"
    );
    let r = get("/", Some(&tamper(&alice)));
    assert_eq!(
        (r.status, r.body.as_str()),
        (401, "Jwt verification fails"),
        "{r:?}"
    );
    assert!(
        r.header("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer realm=")),
        "{r:?}"
    );

    let r = get("/", Some(&auth.token("bob")));
    assert_eq!(r.status, 200, "{r:?}");

    // Exactly alice's, /health_check and bob's requests reached the app.
    assert_requests_from_gateway(&run, 3.0);
}

/// Sends `bytes`, then reads until the gateway closes: `Ok(what it sent back)` once closed
/// (EOF or reset), `Err` if it kept the connection open for `wait`.
fn closed_after(addr: SocketAddr, bytes: &[u8], wait: Duration) -> Result<Vec<u8>, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    if !bytes.is_empty() && s.write_all(bytes).is_err() {
        return Ok(Vec::new());
    }
    let mut back = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(back),
            Ok(n) => back.extend_from_slice(&buf[..n]),
            Err(e) => {
                return match e.kind() {
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                        Err(format!("still open after {wait:?}; got {back:?}"))
                    }
                    _ => Ok(back),
                }
            }
        }
    }
}

#[test]
fn bad_input_on_a_tls_port_is_closed_and_counted() {
    let Some(labs) = LabCerts::make() else { return };
    let edge = Edge::new();
    edge.credential(
        "sentences-credential",
        &[
            ("tls.crt", labs.path("sentences.example.com.crt")),
            ("tls.key", labs.path("sentences.example.com.key")),
        ],
    );
    let port = free_port();
    edge.write(
        "gateway.yaml",
        &format!(
            r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{ name: sentences-gateway, namespace: default }}
spec:
  selector: {{ istio: ingressgateway }}
  servers:
    - port: {{ number: {port}, name: https, protocol: HTTPS }}
      hosts: [ "sentences.example.com" ]
      tls: {{ mode: SIMPLE, credentialName: sentences-credential }}
---
{}"#,
            edge.route_all_to_sentences("sentences", "sentences.example.com", "sentences-gateway")
        ),
    );
    let run = edge.start(&[]);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));

    // Plaintext HTTP and random bytes: closed (a TLS alert at most), never an HTTP answer.
    for bytes in [
        &b"GET / HTTP/1.1\r\nHost: sentences.example.com\r\n\r\n"[..],
        &b"\x00\x01\x02\x03 not TLS at all \xff\xfe"[..],
    ] {
        let back = closed_after(addr, bytes, Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("{bytes:?}: {e}"));
        assert!(
            !String::from_utf8_lossy(&back).contains("HTTP/"),
            "{bytes:?} got an HTTP answer: {back:?}"
        );
    }
    let bad = || run.gateway.handshakes(port, "not_tls") + run.gateway.handshakes(port, "other");
    assert!(
        eventually(Duration::from_secs(5), || bad() == 2.0),
        "two non-TLS connections counted as not_tls or other: {}",
        run.gateway.metrics_text()
    );

    // A client that connects and says nothing is closed once the handshake deadline passes.
    let silent = closed_after(addr, b"", Duration::from_secs(60));
    assert!(silent.is_ok(), "{silent:?}");
    run.gateway.assert_handshakes(port, "timeout", 1.0);

    // The gateway still serves.
    let r = curl_https(&labs, "sentences.example.com", port, "/", &[]);
    assert_eq!(r.echo().app, "sentences");
    assert_requests_from_gateway(&run, 1.0);
}
