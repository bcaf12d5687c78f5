//! The gateway as its operator and its attackers see it, with real processes (`outrider
//! gateway`, `outrider run` sidecars, echo apps, curl, openssl): the configuration directory
//! reloaded under a running gateway (a route moved, a port added and removed, invalid
//! Gateways refused while the old configuration keeps serving), a destination with two
//! endpoints of which one dies, a TCP server carried over mesh mTLS and closed by a DENY
//! policy, clients that never finish their TLS handshake or their request headers, the drain
//! on SIGTERM, and `outrider check` on a gateway directory.
//!
//! The topology is [`crate::gateway::Edge`]'s: the gateway Workload plus `sentences` and
//! `name` behind STRICT sidecars, each app echoing what it received.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::gateway::{curl_http, curl_https, Echo, Edge, GatewayProc, LabCerts, GATEWAY_ID};

const HOST: &str = "sentences.example.com";

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

// ---------------------------------------------------------------------------------------------
// Configuration

/// The Gateway `ops-gateway` with one plaintext HTTP server for [`HOST`] per port (named
/// `http-<port>`), plus `extra` server entries as written.
fn http_gateway(ports: &[u16], extra: &str) -> String {
    let mut servers = String::new();
    for port in ports {
        servers.push_str(&format!(
            "    - port: {{ number: {port}, name: http-{port}, protocol: HTTP }}\n      hosts: [ \"{HOST}\" ]\n"
        ));
    }
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{ name: ops-gateway, namespace: default }}
spec:
  selector: {{ istio: ingressgateway }}
  servers:
{servers}{extra}"#
    )
}

/// The VirtualService `ops`: every request for [`HOST`] at `ops-gateway` to `service:port`.
fn route_to(service: &str, port: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: ops, namespace: default }}
spec:
  hosts: [ "{HOST}" ]
  gateways: [ ops-gateway ]
  http:
    - route:
        - destination: {{ host: {service}, port: {{ number: {port} }} }}
"#
    )
}

fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill")
        .args([format!("-{sig}"), child.id().to_string()])
        .status();
}

/// `outrider_config_reloads_total{result}` of the gateway (`success` | `failure`).
fn reloads(g: &GatewayProc, result: &str) -> f64 {
    metric_sum(
        &g.metrics_text(),
        "outrider_config_reloads_total",
        &[("result", result)],
    )
}

/// Writes `file` into the configuration directory, sends SIGHUP, and waits until the gateway
/// counted one more reload with `result`.
fn reload(edge: &Edge, g: &GatewayProc, file: &str, yaml: &str, result: &str) {
    let before = reloads(g, result);
    edge.write(file, yaml);
    signal(&g.child, "HUP");
    assert!(
        eventually(Duration::from_secs(15), || reloads(g, result) > before),
        "no reload with result {result}:\n{}\ngateway: {}",
        g.metrics_text(),
        g.logs()
    );
}

/// Waits (bounded) for the process to exit on its own.
fn exit_status(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn refused(port: u16) -> bool {
    matches!(
        TcpStream::connect_timeout(&loopback(port), Duration::from_secs(2)),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

// ---------------------------------------------------------------------------------------------
// A small HTTP/1.1 client that keeps its connection

/// One client connection to a gateway port, reused for every request (keep-alive): plain
/// TCP, or TLS ([`Http1::open_tls`]).
struct Http1<S: Read + Write = TcpStream> {
    reader: BufReader<S>,
    port: u16,
}

impl Http1 {
    fn open(port: u16) -> std::io::Result<Http1> {
        let s = TcpStream::connect_timeout(&loopback(port), Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        Ok(Http1 {
            reader: BufReader::new(s),
            port,
        })
    }
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

impl Http1<TlsStream> {
    /// A TLS connection for [`HOST`] (HTTP/1.1 by ALPN) that accepts the gateway's
    /// certificate unchecked: the test is about what happens after the handshake.
    fn open_tls(port: u16) -> std::io::Result<Http1<TlsStream>> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(std::io::Error::other)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(crate::bad_certs::AcceptAnyServer))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = rustls_pki_types::ServerName::try_from(HOST).map_err(std::io::Error::other)?;
        let conn =
            rustls::ClientConnection::new(Arc::new(config), name).map_err(std::io::Error::other)?;
        let tcp = TcpStream::connect_timeout(&loopback(port), Duration::from_secs(5))?;
        tcp.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(Http1 {
            reader: BufReader::new(stream),
            port,
        })
    }
}

impl<S: Read + Write> Http1<S> {
    /// `GET path` for [`HOST`] on this connection: `(status, body)`.
    fn get(&mut self, path: &str) -> std::io::Result<(u16, String)> {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {HOST}:{}\r\nUser-Agent: gateway-ops\r\n\r\n",
            self.port
        );
        self.reader.get_mut().write_all(request.as_bytes())?;
        let eof = || std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed");
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(eof());
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("status line {line:?}")))?;
        let (mut length, mut chunked) = (0usize, false);
        loop {
            let mut h = String::new();
            if self.reader.read_line(&mut h)? == 0 {
                return Err(eof());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (name, value) = h.split_once(':').unwrap_or((h, ""));
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            if name == "content-length" {
                length = value.parse().unwrap_or(0);
            } else if name == "transfer-encoding" && value.eq_ignore_ascii_case("chunked") {
                chunked = true;
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                let mut size = String::new();
                self.reader.read_line(&mut size)?;
                let n = usize::from_str_radix(size.trim(), 16)
                    .map_err(|_| std::io::Error::other(format!("chunk size {size:?}")))?;
                let mut chunk = vec![0u8; n + 2];
                self.reader.read_exact(&mut chunk)?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else {
            body.resize(length, 0);
            self.reader.read_exact(&mut body)?;
        }
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// `GET path` on a new connection: the app that answered (`Err` with what came back
/// otherwise).
fn app_of(port: u16, path: &str) -> Result<String, String> {
    let (status, body) = Http1::open(port)
        .and_then(|mut c| c.get(path))
        .map_err(|e| format!("{path}: {e}"))?;
    match (status, Echo::parse(&body)) {
        (200, Some(echo)) => Ok(echo.app),
        _ => Err(format!("{path}: {status} {body:?}")),
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Reload

/// A route moved from `sentences` to `name` by a reload: the next new connection goes to
/// `name`, and so does the next request of a keep-alive connection opened before the reload
/// (Envoy applies a new route table to the open connections' next requests).
#[test]
fn reload_moves_a_route_and_open_keep_alive_connections_follow_it() {
    let edge = Edge::new();
    let port = free_port();
    let sentences = route_to("sentences", edge.sentences_port);
    edge.write(
        "gateway.yaml",
        &format!("{}---\n{sentences}", http_gateway(&[port], "")),
    );
    let run = edge.start(&[]);

    let mut kept = Http1::open(port).unwrap();
    let (status, body) = kept.get("/before").unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        Echo::parse(&body).map(|e| e.app).as_deref(),
        Some("sentences")
    );

    let to_name = route_to("name", edge.name_port);
    reload(
        &edge,
        &run.gateway,
        "gateway.yaml",
        &format!("{}---\n{to_name}", http_gateway(&[port], "")),
        "success",
    );
    let mut last = None;
    let moved = eventually(Duration::from_secs(10), || {
        let app = app_of(port, "/fresh");
        let done = app.as_deref() == Ok("name");
        last = Some(app);
        done
    });
    assert!(
        moved,
        "new connections never followed the new route: {last:?}\ngateway: {}",
        run.gateway.logs()
    );

    // The connection opened before the reload: its next request follows the new route too.
    let after = kept.get("/after");
    let app = after
        .as_ref()
        .ok()
        .and_then(|(_, body)| Echo::parse(body))
        .map(|e| e.app);
    assert_eq!(
        app.as_deref(),
        Some("name"),
        "a keep-alive connection opened before the reload kept the old route: {after:?}"
    );
}

/// A Gateway server port added by a reload starts listening without a restart; a port
/// removed stops accepting, and the other port keeps serving.
#[test]
fn reload_adds_and_removes_gateway_ports() {
    let edge = Edge::new();
    let (first, second) = (free_port(), free_port());
    let vs = route_to("sentences", edge.sentences_port);
    edge.write(
        "gateway.yaml",
        &format!("{}---\n{vs}", http_gateway(&[first], "")),
    );
    let mut run = edge.start(&[]);
    assert_eq!(app_of(first, "/"), Ok("sentences".into()));
    assert!(refused(second), "{second} listens before it is configured");

    reload(
        &edge,
        &run.gateway,
        "gateway.yaml",
        &format!("{}---\n{vs}", http_gateway(&[first, second], "")),
        "success",
    );
    let mut last = None;
    let added = eventually(Duration::from_secs(10), || {
        last = Some(app_of(second, "/added"));
        last == Some(Ok("sentences".into()))
    });
    assert!(
        added,
        "the added port never served: {last:?}\ngateway: {}",
        run.gateway.logs()
    );
    let dump = run.gateway.admin("/config_dump");
    assert!(dump.contains(&second.to_string()), "{dump}");

    reload(
        &edge,
        &run.gateway,
        "gateway.yaml",
        &format!("{}---\n{vs}", http_gateway(&[second], "")),
        "success",
    );
    assert!(
        eventually(Duration::from_secs(10), || refused(first)),
        "the removed port {first} still accepts: {}",
        run.gateway.logs()
    );
    assert_eq!(app_of(second, "/still"), Ok("sentences".into()));
    assert!(
        run.gateway.child.try_wait().unwrap().is_none(),
        "{}",
        run.gateway.logs()
    );
}

/// A new Gateway the configuration refuses (a MUTUAL server without a CA) fails the reload
/// as a whole: counted as a failure, logged with the reason, and the old configuration (its
/// ports and routes) keeps serving. Fixing the file is then picked up.
#[test]
fn reload_refuses_an_invalid_gateway_and_the_old_one_keeps_serving() {
    let edge = Edge::new();
    let (port, mutual) = (free_port(), free_port());
    let sentences = route_to("sentences", edge.sentences_port);
    edge.write(
        "gateway.yaml",
        &format!("{}---\n{sentences}", http_gateway(&[port], "")),
    );
    let run = edge.start(&[]);
    assert_eq!(app_of(port, "/"), Ok("sentences".into()));
    let failures = reloads(&run.gateway, "failure");

    // The route moves to `name` in the same change: none of it may apply.
    let broken = format!(
        "    - port: {{ number: {mutual}, name: https-mutual, protocol: HTTPS }}\n      hosts: [ \"{HOST}\" ]\n      tls: {{ mode: MUTUAL, serverCertificate: s.crt, privateKey: s.key }}\n"
    );
    let to_name = route_to("name", edge.name_port);
    reload(
        &edge,
        &run.gateway,
        "gateway.yaml",
        &format!("{}---\n{to_name}", http_gateway(&[port], &broken)),
        "failure",
    );
    assert_eq!(reloads(&run.gateway, "failure"), failures + 1.0);
    let logs = run.gateway.logs();
    assert!(
        logs.contains("MUTUAL needs caCertificates or credentialName"),
        "the refused reload should log its reason: {logs}"
    );
    for i in 0..5 {
        assert_eq!(
            app_of(port, &format!("/old/{i}")),
            Ok("sentences".into()),
            "the old route should stay"
        );
    }
    assert!(refused(mutual), "the refused server's port listens");

    // The file fixed (only the route change left): applied.
    reload(
        &edge,
        &run.gateway,
        "gateway.yaml",
        &format!("{}---\n{to_name}", http_gateway(&[port], "")),
        "success",
    );
    assert!(
        eventually(Duration::from_secs(10), || app_of(port, "/fixed")
            == Ok("name".into())),
        "{}",
        run.gateway.logs()
    );
}

/// A reload adding a server whose `credentialName` secret does not exist yet (a Gateway
/// applied before its Secret, as often happens) keeps the old configuration in force. That
/// refusal must show in the reload failure counter, and once the secret appears the new
/// configuration must be applied without another edit (Istio serves the server as soon as
/// its secret exists).
#[test]
fn a_reload_waiting_for_a_missing_secret_is_counted_and_applied_when_it_appears() {
    let Some(labs) = LabCerts::make() else { return };
    let edge = Edge::new();
    let (port, https) = (free_port(), free_port());
    edge.write(
        "gateway.yaml",
        &format!(
            "{}---\n{}",
            http_gateway(&[port], ""),
            route_to("sentences", edge.sentences_port)
        ),
    );
    let run = edge.start(&[]);
    let failures = reloads(&run.gateway, "failure");

    let server = format!(
        "    - port: {{ number: {https}, name: https-later, protocol: HTTPS }}\n      hosts: [ \"{HOST}\" ]\n      tls: {{ mode: SIMPLE, credentialName: later-credential }}\n"
    );
    let before = reloads(&run.gateway, "success") + reloads(&run.gateway, "failure");
    edge.write(
        "gateway.yaml",
        &format!(
            "{}---\n{}",
            http_gateway(&[port], &server),
            route_to("name", edge.name_port)
        ),
    );
    signal(&run.gateway.child, "HUP");
    assert!(
        eventually(Duration::from_secs(15), || reloads(&run.gateway, "success")
            + reloads(&run.gateway, "failure")
            > before),
        "{}",
        run.gateway.logs()
    );
    // The old configuration keeps serving: the old route, no new port.
    assert!(
        eventually(Duration::from_secs(10), || run
            .gateway
            .logs()
            .contains("do not load")),
        "the refusal should be logged: {}",
        run.gateway.logs()
    );
    assert_eq!(app_of(port, "/old"), Ok("sentences".into()));
    assert!(refused(https));
    // Both faults are reported together: they share a cause (the refusal happens after the
    // configuration watcher counted and published the plan).
    let mut faults = Vec::new();
    if reloads(&run.gateway, "failure") <= failures {
        faults.push(format!(
            "the refused reload was counted as a success: outrider_config_reloads_total{{result=\"failure\"}} stayed {failures}"
        ));
    }

    // The secret appears: the configuration waiting for it is applied.
    edge.credential(
        "later-credential",
        &[
            ("tls.crt", labs.path("sentences.example.com.crt")),
            ("tls.key", labs.path("sentences.example.com.key")),
        ],
    );
    // The operator's nudge as well: a reload by signal.
    signal(&run.gateway.child, "HUP");
    let applied = eventually(Duration::from_secs(15), || {
        app_of(port, "/new") == Ok("name".into())
    });
    if applied {
        let r = curl_https(&labs, HOST, https, "/", &[]);
        assert_eq!(r.echo().app, "name", "{r:?}");
    } else {
        faults.push(
            "the configuration refused for a missing secret was never applied once the secret existed, even after a SIGHUP (the plan is unchanged, so nothing retries it)".into(),
        );
    }
    assert!(
        faults.is_empty(),
        "{faults:#?}\ngateway: {}",
        run.gateway.logs()
    );
}

/// An open TLS connection whose server a reload moves from SIMPLE to MUTUAL cannot keep
/// sending requests without the client certificate it never presented: its next request is
/// refused (421, a new handshake needed), never routed.
#[test]
fn reload_to_mutual_refuses_the_next_request_of_an_open_simple_connection() {
    let Some(labs) = LabCerts::make() else { return };
    let edge = Edge::new();
    let port = free_port();
    edge.credential(
        "sentences-credential",
        &[
            ("tls.crt", labs.path("sentences.example.com.crt")),
            ("tls.key", labs.path("sentences.example.com.key")),
            ("ca.crt", labs.path("example.com.crt")),
        ],
    );
    let config = |mode: &str| {
        format!(
            r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{ name: ops-gateway, namespace: default }}
spec:
  selector: {{ istio: ingressgateway }}
  servers:
    - port: {{ number: {port}, name: https, protocol: HTTPS }}
      hosts: [ "{HOST}" ]
      tls: {{ mode: {mode}, credentialName: sentences-credential }}
---
{}"#,
            route_to("sentences", edge.sentences_port)
        )
    };
    edge.write("gateway.yaml", &config("SIMPLE"));
    let run = edge.start(&[]);

    let mut kept = Http1::open_tls(port).unwrap();
    let (status, body) = kept.get("/before").unwrap();
    assert_eq!(
        (status, Echo::parse(&body).map(|e| e.app)),
        (200, Some("sentences".into()))
    );

    reload(
        &edge,
        &run.gateway,
        "gateway.yaml",
        &config("MUTUAL"),
        "success",
    );
    // Applied once a new client without a certificate is refused.
    assert!(
        eventually(Duration::from_secs(10), || !curl_https(
            &labs,
            HOST,
            port,
            "/",
            &[]
        )
        .ok),
        "{}",
        run.gateway.logs()
    );
    let after = kept.get("/after");
    assert!(
        matches!(after, Ok((421, _)) | Err(_)),
        "the open SIMPLE connection was still routed after the move to MUTUAL: {after:?}"
    );
    // With the certificate, a new connection is answered.
    let r = curl_https(
        &labs,
        HOST,
        port,
        "/with-cert",
        &[
            "--cert",
            "client.example.com.crt",
            "--key",
            "client.example.com.key",
        ],
    );
    assert_eq!(r.echo().app, "sentences");
}

// ---------------------------------------------------------------------------------------------
// 2. Several endpoints

fn echo_b(s: TcpStream) {
    crate::gateway::echo(s, "sentences-b")
}

/// `sentences` with a second workload (sidecar on 127.0.0.2, its own echo app): the gateway
/// spreads requests over both; once the second one is killed, every request still gets an
/// answer (a refused connection moves to the next endpoint).
#[test]
fn two_endpoints_share_requests_and_one_killed_costs_no_request() {
    let edge = Edge::new();
    let port = free_port();
    let app_b = App::spawn(echo_b);
    let certs_b = edge.pki.issue("sentences-b", "default", "sentences");
    edge.write(
        "sentences-b.yaml",
        &format!(
            r#"apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: {{ name: sentences-b, namespace: default, labels: {{ app: sentences, version: v1 }} }}
spec:
  serviceAccount: sentences
  address: 127.0.0.2
  ports:
    - {{ name: http, port: {sp}, targetPort: {bp}, protocol: HTTP }}
"#,
            sp = edge.sentences_port,
            bp = app_b.port
        ),
    );
    edge.write(
        "gateway.yaml",
        &format!(
            "{}---\n{}",
            http_gateway(&[port], ""),
            route_to("sentences", edge.sentences_port)
        ),
    );
    let side_b = Sidecar::start(
        edge.config(),
        "sentences-b",
        &certs_b,
        &["--inbound-ip", "127.0.0.2"],
    );
    let run = edge.start(&[]);

    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..20 {
        let app = app_of(port, &format!("/spread/{i}"))
            .unwrap_or_else(|e| panic!("{e}\ngateway: {}", run.gateway.logs()));
        *seen.entry(app).or_default() += 1;
    }
    for app in ["sentences", "sentences-b"] {
        assert!(
            seen.get(app).copied().unwrap_or(0) >= 5,
            "requests not spread over both endpoints: {seen:?}"
        );
    }
    let upstream_failures = || {
        metric_sum(
            &run.gateway.metrics_text(),
            "outrider_upstream_failures_total",
            &[],
        )
    };
    let failed_before = upstream_failures();

    // The second endpoint dies (its sidecar is killed and reaped: its sockets are closed).
    drop(side_b);
    let mut failed = Vec::new();
    for i in 0..30 {
        match app_of(port, &format!("/after/{i}")) {
            Ok(app) if app == "sentences" => {}
            other => failed.push((i, other)),
        }
    }
    assert!(
        failed.is_empty(),
        "requests failed after one endpoint died: {failed:?}\ngateway: {}",
        run.gateway.logs()
    );
    // The dead endpoint was tried (and skipped), not forgotten.
    assert!(
        upstream_failures() > failed_before,
        "{}",
        run.gateway.metrics_text()
    );
    drop(app_b);
}

// ---------------------------------------------------------------------------------------------
// 3. TCP at the gateway

/// A gateway with a TCP server on `port` routed (`tcp[]`) to the mesh TCP service `db` (an
/// echo app behind its own sidecar).
struct TcpEdge {
    edge: Edge,
    port: u16,
    db: Sidecar,
    run: crate::gateway::Running,
    _app: App,
}

const DB_ID: &str = "spiffe://cluster.local/ns/default/sa/db";

impl TcpEdge {
    fn start() -> TcpEdge {
        let edge = Edge::new();
        let app = App::echo();
        let (port, db_port) = (free_port(), free_port());
        let certs = edge.pki.issue("db", "default", "db");
        edge.write(
            "tcp.yaml",
            &format!(
                r#"apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: {{ name: db, namespace: default, labels: {{ app: db }} }}
spec:
  serviceAccount: db
  address: 127.0.0.1
  ports:
    - {{ name: tcp, port: {db_port}, targetPort: {app_port}, protocol: TCP }}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{ name: tcp-gateway, namespace: default }}
spec:
  selector: {{ istio: ingressgateway }}
  servers:
    - port: {{ number: {port}, name: tcp, protocol: TCP }}
      hosts: [ "*" ]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: db-edge, namespace: default }}
spec:
  hosts: [ "*" ]
  gateways: [ tcp-gateway ]
  tcp:
    - match: [ {{ port: {port} }} ]
      route:
        - destination: {{ host: db, port: {{ number: {db_port} }} }}
"#,
                app_port = app.port
            ),
        );
        let db = Sidecar::start(edge.config(), "db", &certs, &[]);
        let run = edge.start(&[]);
        TcpEdge {
            edge,
            port,
            db,
            run,
            _app: app,
        }
    }

    /// Connections the db sidecar accepted over mTLS from the gateway's identity.
    fn mtls_from_gateway(&self) -> f64 {
        metric_sum(
            &self.db.metrics_text(),
            "istio_tcp_connections_opened_total",
            &[
                ("reporter", "destination"),
                ("connection_security_policy", "mutual_tls"),
                ("source_principal", GATEWAY_ID),
            ],
        )
    }

    fn denied(&self) -> f64 {
        metric_sum(
            &self.run.gateway.metrics_text(),
            "outrider_authz_denied_total",
            &[("port", &self.port.to_string())],
        )
    }

    /// Adds the DENY policy for clients from 127.0.0.1 at the gateway (`field`: `ipBlocks` or
    /// `remoteIpBlocks`).
    fn deny_loopback(&self, field: &str) {
        reload(
            &self.edge,
            &self.run.gateway,
            "deny.yaml",
            &format!(
                r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{ name: deny-loopback, namespace: istio-system }}
spec:
  selector: {{ matchLabels: {{ istio: ingressgateway }} }}
  action: DENY
  rules:
    - from:
        - source: {{ {field}: [ "127.0.0.1/32" ] }}
"#
            ),
            "success",
        );
    }
}

/// Whether a new connection to the TCP server is closed without its bytes coming back
/// (denied), rather than echoed.
fn denied_now(addr: SocketAddr) -> bool {
    matches!(
        send_and_close_kind(addr, b"denied?").as_str(),
        "eof" | "reset"
    )
}

/// One echo exchange on an open connection: `Ok(true)` if the bytes came back, `Ok(false)` if
/// the connection was closed instead.
fn exchange(s: &mut TcpStream, msg: &[u8]) -> bool {
    if s.write_all(msg).is_err() {
        return false;
    }
    let mut back = vec![0u8; msg.len()];
    matches!(s.read_exact(&mut back), Ok(()) if back == msg)
}

#[test]
fn tcp_server_carries_bytes_over_mesh_mtls_and_a_deny_policy_closes_new_connections() {
    let t = TcpEdge::start();
    let addr = loopback(t.port);
    for i in 0..3 {
        let msg = format!("over the edge {i}");
        let back = round_trip(addr, msg.as_bytes())
            .unwrap_or_else(|e| panic!("{e}\ngateway: {}", t.run.gateway.logs()));
        assert_eq!(back, msg.as_bytes(), "{}", t.run.gateway.logs());
    }
    assert!(
        eventually(Duration::from_secs(5), || t.mtls_from_gateway() == 3.0),
        "db's sidecar should count 3 mTLS connections from {GATEWAY_ID}:\n{}",
        t.db.metrics_text()
    );
    let gateway_side = [
        ("reporter", "source"),
        ("source_principal", GATEWAY_ID),
        ("destination_principal", DB_ID),
    ];
    let opened = metric_sum(
        &t.run.gateway.metrics_text(),
        "istio_tcp_connections_opened_total",
        &gateway_side,
    );
    assert_eq!(opened, 3.0, "{}", t.run.gateway.metrics_text());

    t.deny_loopback("ipBlocks");
    let closed = eventually(Duration::from_secs(10), || denied_now(addr));
    assert!(
        closed,
        "the DENY policy never applied: {}",
        t.run.gateway.logs()
    );
    let (denied, reached) = (t.denied(), t.mtls_from_gateway());
    assert!(denied >= 1.0, "{}", t.run.gateway.metrics_text());
    // Once more: closed, counted, and nothing reached db.
    assert!(denied_now(addr));
    assert!(
        eventually(Duration::from_secs(5), || t.denied() == denied + 1.0),
        "{}",
        t.run.gateway.metrics_text()
    );
    assert_eq!(
        t.mtls_from_gateway(),
        reached,
        "a denied connection reached db"
    );
}

/// `remoteIpBlocks` (the client address as the gateway sees it without trusted proxies) denies
/// as `ipBlocks` does.
#[test]
fn remote_ip_blocks_deny_at_the_tcp_gateway() {
    let t = TcpEdge::start();
    let addr = loopback(t.port);
    assert_eq!(round_trip(addr, b"before").unwrap(), b"before");
    t.deny_loopback("remoteIpBlocks");
    let closed = eventually(Duration::from_secs(10), || denied_now(addr));
    assert!(closed, "{}", t.run.gateway.logs());
    assert!(t.denied() >= 1.0, "{}", t.run.gateway.metrics_text());
}

/// A connection already open when a reload adds a DENY policy that matches it is closed at
/// the reload, as a sidecar's TCP port does (docs/configuration.md, Reload), counted in
/// `outrider_authz_denied_total`.
#[test]
fn a_deny_policy_added_by_reload_closes_open_gateway_tcp_connections() {
    let t = TcpEdge::start();
    let mut open = TcpStream::connect(loopback(t.port)).unwrap();
    open.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert!(exchange(&mut open, b"before the policy"));
    t.deny_loopback("ipBlocks");
    assert!(
        eventually(Duration::from_secs(10), || denied_now(loopback(t.port))),
        "{}",
        t.run.gateway.logs()
    );
    let still_open = exchange(&mut open, b"after the policy");
    assert!(
        !still_open,
        "a connection the new policy denies stayed open after the reload\ngateway: {}",
        t.run.gateway.logs()
    );
    let closed = metric_sum(
        &t.run.gateway.metrics_text(),
        "outrider_connections_closed_on_reload_total",
        &[
            ("listener", &t.port.to_string()),
            ("reason", "denied_by_authorization"),
        ],
    );
    assert_eq!(closed, 1.0, "{}", t.run.gateway.metrics_text());
}

// ---------------------------------------------------------------------------------------------
// 4. Slow and silent clients

/// A ClientHello for `sni`, made by rustls (never continued: the test sends it and stops).
fn client_hello(sni: &str) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    hello
}

/// Reads until the peer closes: `true` once closed (EOF or reset), `false` if still open after
/// `wait`.
fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// Clients that send a ClientHello (whole, or its first bytes) and never finish the handshake:
/// other clients are served meanwhile; each stalled one is closed at the handshake deadline
/// and counted as `timeout`.
#[test]
fn unfinished_tls_handshakes_are_closed_without_blocking_other_clients() {
    let Some(labs) = LabCerts::make() else { return };
    let edge = Edge::new();
    let port = free_port();
    edge.credential(
        "sentences-credential",
        &[
            ("tls.crt", labs.path("sentences.example.com.crt")),
            ("tls.key", labs.path("sentences.example.com.key")),
        ],
    );
    edge.write(
        "gateway.yaml",
        &format!(
            r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{ name: ops-gateway, namespace: default }}
spec:
  selector: {{ istio: ingressgateway }}
  servers:
    - port: {{ number: {port}, name: https, protocol: HTTPS }}
      hosts: [ "{HOST}" ]
      tls: {{ mode: SIMPLE, credentialName: sentences-credential }}
---
{}"#,
            route_to("sentences", edge.sentences_port)
        ),
    );
    let run = edge.start(&[]);
    let hello = client_hello(HOST);

    // 16 clients with a whole ClientHello (the gateway answers with its flight and waits for
    // the client's Finished forever), 4 with a ClientHello cut short.
    let mut stalled = Vec::new();
    for i in 0..20 {
        let mut s = TcpStream::connect(loopback(port)).unwrap();
        let bytes = if i < 16 { &hello[..] } else { &hello[..20] };
        s.write_all(bytes).unwrap();
        stalled.push(s);
    }
    // Meanwhile other clients are served.
    for i in 0..3 {
        let r = curl_https(&labs, HOST, port, &format!("/meanwhile/{i}"), &[]);
        assert!(r.ok, "{r:?}\ngateway: {}", run.gateway.logs());
        assert_eq!(r.echo().app, "sentences");
    }
    for (i, s) in stalled.iter_mut().enumerate() {
        assert!(
            closed_within(s, Duration::from_secs(60)),
            "stalled client {i} was never closed\ngateway: {}",
            run.gateway.logs()
        );
    }
    run.gateway.assert_handshakes(port, "timeout", 20.0);
    let server_timeouts = metric_sum(
        &run.gateway.metrics_text(),
        "outrider_gateway_tls_handshakes_total",
        &[("server", "https"), ("outcome", "timeout")],
    );
    assert_eq!(
        server_timeouts,
        16.0,
        "whole ClientHellos name their server: {}",
        run.gateway.metrics_text()
    );
    run.gateway.assert_handshakes(port, "ok", 3.0);
    let r = curl_https(&labs, HOST, port, "/after", &[]);
    assert_eq!(r.echo().app, "sentences");
}

/// Slowloris on the plaintext HTTP port: clients that send a request line and then a header
/// byte now and then, never finishing the head. Other clients are served meanwhile, and the
/// slow ones are closed by the header deadline.
#[test]
fn slowloris_on_the_http_port_does_not_block_other_clients() {
    if !tool_available("curl") {
        return;
    }
    let cwd = temp_dir("gateway-slowloris");
    let edge = Edge::new();
    let port = free_port();
    edge.write(
        "gateway.yaml",
        &format!(
            "{}---\n{}",
            http_gateway(&[port], ""),
            route_to("sentences", edge.sentences_port)
        ),
    );
    let run = edge.start(&[]);

    let stop = Arc::new(AtomicBool::new(false));
    let (closed_tx, closed_rx) = mpsc::channel::<usize>();
    let mut threads = Vec::new();
    for i in 0..20 {
        let mut s = TcpStream::connect(loopback(port)).unwrap();
        let head = format!("GET /slow-loris/{i} HTTP/1.1\r\nHost: {HOST}:{port}\r\n");
        s.write_all(head.as_bytes()).unwrap();
        let (stop, closed_tx) = (stop.clone(), closed_tx.clone());
        threads.push(std::thread::spawn(move || {
            // A header, one byte every 200 ms, for at most two minutes; the head never ends.
            let trickle = b"x-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut k = 0;
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                let byte = if k % trickle.len() == trickle.len() - 1 {
                    b'\n'
                } else {
                    trickle[k % trickle.len()]
                };
                if s.write_all(&[byte]).is_err() {
                    let _ = closed_tx.send(i);
                    return;
                }
                k += 1;
                s.set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                let mut buf = [0u8; 1024];
                match s.read(&mut buf) {
                    Ok(0) => {
                        let _ = closed_tx.send(i);
                        return;
                    }
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => {
                        let _ = closed_tx.send(i);
                        return;
                    }
                }
            }
        }));
    }
    drop(closed_tx);

    for i in 0..5 {
        let r = curl_http(cwd.path(), HOST, port, &format!("/meanwhile/{i}"), &[]);
        assert_eq!(r.status, 200, "{r:?}\ngateway: {}", run.gateway.logs());
        assert_eq!(r.echo().app, "sentences");
    }
    // The slow heads are cut off by the header deadline (not left open for ever).
    let mut closed = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(100);
    while closed.len() < 20 {
        let left = deadline.saturating_duration_since(Instant::now());
        match closed_rx.recv_timeout(left) {
            Ok(i) => {
                closed.insert(i);
            }
            Err(_) => break,
        }
    }
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        let _ = t.join();
    }
    assert_eq!(
        closed.len(),
        20,
        "slow clients never closed by the gateway: only {closed:?}"
    );
    // None of them reached the app.
    let to_app = metric_sum(
        &run.sentences.metrics_text(),
        "istio_requests_total",
        &[("reporter", "destination")],
    );
    assert_eq!(to_app, 5.0, "{}", run.sentences.metrics_text());
}

// ---------------------------------------------------------------------------------------------
// 5. Drain

/// An HTTP/1.1 app that holds every request until released: the test knows when a request
/// is at the app (`arrived`) and decides when it is answered.
struct HeldApp {
    port: u16,
    arrived: mpsc::Receiver<String>,
    release: Arc<(Mutex<bool>, Condvar)>,
    stop: Arc<AtomicBool>,
}

impl HeldApp {
    fn start() -> HeldApp {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, arrived) = mpsc::channel();
        let release = Arc::new((Mutex::new(false), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, st) = (release.clone(), stop.clone());
        std::thread::spawn(move || {
            for s in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(s) = s else { continue };
                let (tx, r) = (tx.clone(), r.clone());
                std::thread::spawn(move || held(s, tx, r));
            }
        });
        HeldApp {
            port,
            arrived,
            release,
            stop,
        }
    }

    fn release(&self) {
        let (lock, cvar) = &*self.release;
        *lock.lock().unwrap() = true;
        cvar.notify_all();
    }
}

impl Drop for HeldApp {
    fn drop(&mut self) {
        self.release();
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&loopback(self.port), Duration::from_secs(1));
    }
}

fn held(stream: TcpStream, arrived: mpsc::Sender<String>, release: Arc<(Mutex<bool>, Condvar)>) {
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h.trim_end().is_empty() {
                break;
            }
        }
        let path = line.split(' ').nth(1).unwrap_or("").to_string();
        let _ = arrived.send(path.clone());
        {
            let (lock, cvar) = &*release;
            let released = lock.lock().unwrap();
            // Bounded: a test that never releases still ends its threads.
            let _ = cvar
                .wait_timeout_while(released, Duration::from_secs(120), |r| !*r)
                .unwrap();
        }
        let body = format!("app=held\nGET {path} HTTP/1.1\n");
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if out.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// An edge whose HTTP port routes to `held` (a [`HeldApp`] behind its sidecar).
fn held_edge(drain_timeout: &str) -> (Edge, HeldApp, Sidecar, crate::gateway::Running, u16) {
    let edge = Edge::new();
    let app = HeldApp::start();
    let (port, held_port) = (free_port(), free_port());
    let certs = edge.pki.issue("held", "default", "held");
    edge.write(
        "held.yaml",
        &format!(
            r#"apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: {{ name: held, namespace: default, labels: {{ app: held }} }}
spec:
  serviceAccount: held
  address: 127.0.0.1
  ports:
    - {{ name: http, port: {held_port}, targetPort: {app_port}, protocol: HTTP }}
---
{gateway}---
{vs}"#,
            app_port = app.port,
            gateway = http_gateway(&[port], ""),
            vs = route_to("held", held_port),
        ),
    );
    let sidecar = Sidecar::start(edge.config(), "held", &certs, &[]);
    let run = edge.start(&["--drain-timeout", drain_timeout]);
    (edge, app, sidecar, run, port)
}

/// SIGTERM with a request at the app: the gateway stops accepting at once, closes an idle
/// keep-alive connection, lets the request finish with the app's answer, and exits 0 on its
/// own long before the drain deadline.
#[test]
fn sigterm_lets_a_request_in_flight_finish_refuses_new_connections_and_exits_zero() {
    let (_edge, app, _sidecar, mut run, port) = held_edge("60s");
    // An idle keep-alive connection that has had its request.
    let mut idle = Http1::open(port).unwrap();
    let warm = std::thread::spawn(move || {
        let r = idle.get("/warm");
        (idle, r)
    });
    assert_eq!(
        app.arrived.recv_timeout(Duration::from_secs(20)).as_deref(),
        Ok("/warm")
    );
    app.release();
    let (idle, warmed) = warm.join().unwrap();
    assert_eq!(warmed.unwrap().0, 200);
    // Hold the next requests again.
    *app.release.0.lock().unwrap() = false;

    let slow = std::thread::spawn(move || Http1::open(port).and_then(|mut c| c.get("/slow")));
    assert_eq!(
        app.arrived.recv_timeout(Duration::from_secs(20)).as_deref(),
        Ok("/slow"),
        "the request never reached the app: {}",
        run.gateway.logs()
    );
    signal(&run.gateway.child, "TERM");
    assert!(
        eventually(Duration::from_secs(10), || refused(port)),
        "the gateway still accepts after SIGTERM: {}",
        run.gateway.logs()
    );
    let mut idle = idle.reader.into_inner();
    assert!(
        closed_within(&mut idle, Duration::from_secs(10)),
        "an idle keep-alive connection held the drain"
    );
    assert!(
        run.gateway.child.try_wait().unwrap().is_none(),
        "the gateway exited with a request in flight: {}",
        run.gateway.logs()
    );
    app.release();
    let (status, body) = slow
        .join()
        .unwrap()
        .expect("the request in flight completes");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        Echo::parse(&body).map(|e| e.path().to_string()).as_deref(),
        Some("/slow")
    );
    // Well before the 60 s drain deadline.
    let status = exit_status(&mut run.gateway.child, Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}: {}",
        run.gateway.logs()
    );
}

/// SIGTERM with a request the app never answers: at the drain deadline the gateway closes it
/// and exits 0.
#[test]
fn the_drain_deadline_closes_a_request_that_never_ends_and_exits_zero() {
    let (_edge, app, _sidecar, mut run, port) = held_edge("1s");
    let slow = std::thread::spawn(move || Http1::open(port).and_then(|mut c| c.get("/never")));
    assert_eq!(
        app.arrived.recv_timeout(Duration::from_secs(20)).as_deref(),
        Ok("/never")
    );
    signal(&run.gateway.child, "TERM");
    let status = exit_status(&mut run.gateway.child, Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}: {}",
        run.gateway.logs()
    );
    let got = slow.join().unwrap();
    assert!(
        !matches!(got, Ok((200, _))),
        "the unanswered request got an answer: {got:?}"
    );
    assert!(refused(port));
    let logs = run.gateway.logs();
    assert!(logs.contains("drain deadline passed"), "{logs}");
}

// ---------------------------------------------------------------------------------------------
// 6. outrider check

/// `outrider check --config <dir> --workload ingressgateway` on the edge's directory prints
/// its servers and routes; a broken Gateway fails with file, line and field.
#[test]
fn check_prints_the_gateway_and_locates_a_broken_one() {
    let edge = Edge::new();
    let port = free_port();
    edge.write(
        "gateway.yaml",
        &format!(
            "{}---\n{}",
            http_gateway(&[port], ""),
            route_to("sentences", edge.sentences_port)
        ),
    );
    let check = || {
        Command::new(BIN)
            .args(["check", "--config"])
            .arg(edge.config())
            .args(["--workload", "ingressgateway"])
            .output()
            .unwrap()
    };
    let out = check();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        format!("port {port} (plaintext):"),
        format!("server http-{port} (Gateway default/ops-gateway, HTTP, hosts {HOST})"),
        "VirtualService default/ops http[0]".to_string(),
        format!(
            "sentences.default.svc.cluster.local:{}",
            edge.sentences_port
        ),
    ] {
        assert!(stdout.contains(&want), "{want}\nin:\n{stdout}");
    }

    // A typo in a mode.
    let broken = http_gateway(
        &[port],
        "    - port: { number: 8443, name: https, protocol: HTTPS }\n      hosts: [ \"a.example.com\" ]\n      tls: { mode: SIMPEL }\n",
    );
    edge.write("gateway.yaml", &broken);
    let line = broken.lines().position(|l| l.contains("SIMPEL")).unwrap() + 1;
    let out = check();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let file = edge.config().join("gateway.yaml");
    let at = format!("{}:{line}:", file.display());
    assert!(stderr.contains(&at), "{at} in: {stderr}");
    assert!(stderr.contains("spec.servers[1].tls.mode"), "{stderr}");
    assert!(stderr.contains("SIMPEL"), "{stderr}");

    // A rule the configuration checks beyond the schema: MUTUAL without a CA.
    let broken = http_gateway(
        &[port],
        "    - port: { number: 8443, name: https, protocol: HTTPS }\n      hosts: [ \"a.example.com\" ]\n      tls:\n        mode: MUTUAL\n        credentialName: \"\"\n        serverCertificate: s.crt\n        privateKey: s.key\n",
    );
    edge.write("gateway.yaml", &broken);
    let line = broken
        .lines()
        .position(|l| l.contains("mode: MUTUAL"))
        .unwrap()
        + 1;
    let out = check();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let at = format!("{}:{line}:", file.display());
    assert!(stderr.contains(&at), "{at} in: {stderr}");
    assert!(stderr.contains("spec.servers[1].tls.mode"), "{stderr}");
    assert!(
        stderr.contains("MUTUAL needs caCertificates or credentialName"),
        "{stderr}"
    );
}
