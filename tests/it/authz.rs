//! AuthorizationPolicy on TCP ports, enforced by real sidecars: a denied connection is closed
//! before a byte reaches the app (the app never even sees a connection), counted in
//! `outrider_authz_denied_total`; dry-run policies count without enforcing; a reload that adds
//! a DENY closes the open connections it denies; a bad policy is a located config error.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;

/// An echo app that records how many connections it accepted and every byte it received.
struct Recorder {
    port: u16,
    connections: Arc<AtomicUsize>,
    received: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
}

impl Recorder {
    fn new() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, r, st) = (connections.clone(), received.clone(), stop.clone());
        std::thread::spawn(move || {
            for s in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut s) = s else { continue };
                c.fetch_add(1, Ordering::SeqCst);
                let r = r.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                r.lock().unwrap().extend_from_slice(&buf[..n]);
                                if s.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = s.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Recorder {
            port,
            connections,
            received,
            stop,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn received(&self) -> Vec<u8> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_secs(1),
        );
    }
}

/// An AuthorizationPolicy selecting `age` with `action` and `rules` (YAML flow style).
fn age_policy(name: &str, action: &str, rules: &str, dry_run: bool) -> String {
    let annotations = if dry_run {
        ", annotations: { istio.io/dry-run: \"true\" }"
    } else {
        ""
    };
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{ name: {name}, namespace: default{annotations} }}\nspec:\n  selector: {{ matchLabels: {{ app: age }} }}\n  action: {action}\n  rules: {rules}\n"
    )
}

const ONLY_SENTENCES: &str =
    "[{ from: [{ source: { principals: [cluster.local/ns/default/sa/sentences] } }] }]";

fn write_policy(mesh: &Mesh, yaml: &str) {
    replace_file(&mesh.config().join("authz.yaml"), yaml);
}

fn denied(sidecar: &Sidecar, port: u16, policy: &str) -> f64 {
    metric_sum(
        &sidecar.metrics_text(),
        "outrider_authz_denied_total",
        &[("port", &port.to_string()), ("policy", policy)],
    )
}

/// A mesh client with its own certificate (`identity` issued by the mesh CA), speaking the
/// mesh ALPN straight to age's port with openssl; returns what it printed.
fn openssl_client(mesh: &Mesh, identity: &Path, secret: &[u8]) -> String {
    let mesh_root = mesh.pki.ca_dir().join("root-cert.pem");
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", &mesh.age_addr().to_string()])
        .args(["-alpn", "istio", "-ign_eof"])
        .args(["-CAfile", mesh_root.to_str().unwrap()])
        .args(["-cert", identity.join("cert-chain.pem").to_str().unwrap()])
        .args(["-key", identity.join("key.pem").to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = child.stdin.take().unwrap().write_all(secret);
    let out = bounded_output(child, "openssl s_client", Duration::from_secs(20));
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn allow_only_sentences_closes_other_identities_before_the_app() {
    if !tool_available("openssl") {
        return;
    }
    let app = Recorder::new();
    let mesh = Mesh::new(app.port, "TCP", "STRICT");
    write_policy(
        &mesh,
        &age_policy("only-sentences", "ALLOW", ONLY_SENTENCES, false),
    );
    let age = mesh.sidecar("age");
    let _sentences = mesh.sidecar("sentences");

    assert_eq!(
        round_trip(mesh.sentences_out_addr(), b"from sentences").unwrap(),
        b"from sentences"
    );
    assert_eq!(app.connections(), 1);

    // Another mesh identity, with a valid mesh certificate: the handshake completes (the
    // client verifies the sidecar), then the policy closes the connection.
    let intruder = mesh.pki.issue("intruder", "default", "intruder");
    let text = openssl_client(&mesh, &intruder, b"intruder-secret\n");
    assert!(text.contains("Verification: OK"), "{text}");
    assert!(
        eventually(Duration::from_secs(5), || denied(
            &age,
            mesh.age_in,
            "no ALLOW policy matched"
        ) == 1.0),
        "{}\n{}",
        age.metrics_text(),
        age.logs()
    );
    // Nothing of it reached the app: no second connection, no byte of the secret.
    assert_eq!(app.connections(), 1);
    assert_eq!(app.received(), b"from sentences");
    let logs = age.logs();
    assert!(
        logs.contains("connection denied by AuthorizationPolicy")
            && logs.contains("cluster.local/ns/default/sa/intruder"),
        "{logs}"
    );
    // sentences still passes
    assert_eq!(
        round_trip(mesh.sentences_out_addr(), b"again").unwrap(),
        b"again"
    );
}

#[test]
fn plaintext_never_matches_principals_under_permissive() {
    let app = Untouched::new();
    let mesh = Mesh::new(app.port(), "TCP", "PERMISSIVE");
    write_policy(
        &mesh,
        &age_policy("only-sentences", "ALLOW", ONLY_SENTENCES, false),
    );
    let age = mesh.sidecar("age");
    let kind = send_and_close_kind(mesh.age_addr(), b"plaintext hello");
    assert!(kind == "eof" || kind == "reset", "{kind}");
    assert!(
        eventually(Duration::from_secs(5), || denied(
            &age,
            mesh.age_in,
            "no ALLOW policy matched"
        ) == 1.0),
        "{}",
        age.metrics_text()
    );
    app.assert_no_connection();
    // PERMISSIVE let it in as plaintext; the policy closed it.
    assert_eq!(
        metric_sum(
            &age.metrics_text(),
            "outrider_plaintext_accepted_total",
            &[]
        ),
        1.0
    );
}

#[test]
fn deny_by_namespace() {
    let app = App::echo();
    let mesh = Mesh::new(app.port, "TCP", "PERMISSIVE");
    write_policy(
        &mesh,
        &age_policy(
            "no-default",
            "DENY",
            "[{ from: [{ source: { namespaces: [default] } }] }]",
            false,
        ),
    );
    let age = mesh.sidecar("age");
    let _sentences = mesh.sidecar("sentences");
    // sentences is in namespace default: denied after its handshake.
    let got = round_trip(mesh.sentences_out_addr(), b"from sentences");
    assert!(!matches!(&got, Ok(b) if !b.is_empty()), "{got:?}");
    assert!(
        eventually(Duration::from_secs(5), || denied(
            &age,
            mesh.age_in,
            "default/no-default"
        ) == 1.0),
        "{}",
        age.metrics_text()
    );
    // A plaintext client has no namespace: the DENY does not match it.
    assert_eq!(round_trip(mesh.age_addr(), b"plain").unwrap(), b"plain");
    let m = age.metrics_text();
    assert_eq!(
        metric_sum(
            &m,
            "istio_tcp_connections_opened_total",
            &[("connection_security_policy", "mutual_tls")]
        ),
        0.0,
        "{m}"
    );
}

#[test]
fn dry_run_deny_and_audit_count_without_enforcing() {
    let app = App::echo();
    let mesh = Mesh::new(app.port, "TCP", "STRICT");
    write_policy(
        &mesh,
        &(age_policy(
            "would-deny",
            "DENY",
            "[{ from: [{ source: { namespaces: [default] } }] }]",
            true,
        ) + "---\n"
            + &age_policy("audit-sentences", "AUDIT", ONLY_SENTENCES, false)),
    );
    let age = mesh.sidecar("age");
    let _sentences = mesh.sidecar("sentences");
    for i in 0..2 {
        let msg = format!("call {i}");
        assert_eq!(
            round_trip(mesh.sentences_out_addr(), msg.as_bytes()).unwrap(),
            msg.as_bytes()
        );
    }
    let port = mesh.age_in.to_string();
    assert!(
        eventually(Duration::from_secs(5), || metric_sum(
            &age.metrics_text(),
            "outrider_authz_dry_run_total",
            &[("port", &port), ("result", "deny")]
        ) == 2.0),
        "{}",
        age.metrics_text()
    );
    // AUDIT only marks: counted and logged once per connection, after the dry-run count.
    assert!(
        eventually(Duration::from_secs(5), || {
            metric_sum(
                &age.metrics_text(),
                "outrider_authz_audited_total",
                &[("port", &port)],
            ) == 2.0
                && age.logs().matches("audited by AuthorizationPolicy").count() == 2
        }),
        "{}\n{}",
        age.metrics_text(),
        age.logs()
    );
    assert_eq!(
        metric_sum(&age.metrics_text(), "outrider_authz_denied_total", &[]),
        0.0
    );
}

#[test]
fn reload_adding_a_deny_closes_open_connections() {
    let app = App::echo();
    let mesh = Mesh::new(app.port, "TCP", "STRICT");
    write_policy(&mesh, &age_policy("allow-all", "ALLOW", "[{}]", false));
    let age = mesh.sidecar("age");
    let _sentences = mesh.sidecar("sentences");
    let mut open = TcpStream::connect(mesh.sentences_out_addr()).unwrap();
    open.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let echo = |s: &mut TcpStream, msg: &[u8]| -> std::io::Result<()> {
        s.write_all(msg)?;
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back)?;
        assert_eq!(back, msg);
        Ok(())
    };
    echo(&mut open, b"before the reload").unwrap();

    write_policy(
        &mesh,
        &(age_policy("allow-all", "ALLOW", "[{}]", false)
            + "---\n"
            + &age_policy(
                "deny-sentences",
                "DENY",
                "[{ from: [{ source: { principals: [cluster.local/ns/default/sa/sentences] } }] }]",
                false,
            )),
    );
    let written = Instant::now();
    loop {
        if echo(&mut open, b"ping").is_err() {
            break;
        }
        assert!(
            written.elapsed() < Duration::from_secs(15),
            "the open connection survived a DENY: {}",
            age.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let m = age.metrics_text();
    assert_eq!(
        metric_sum(
            &m,
            "outrider_connections_closed_on_reload_total",
            &[
                ("direction", "inbound"),
                ("reason", "denied_by_authorization")
            ]
        ),
        1.0,
        "{m}"
    );
    assert_eq!(denied(&age, mesh.age_in, "default/deny-sentences"), 1.0);
    // New connections are denied too.
    let got = round_trip(mesh.sentences_out_addr(), b"after");
    assert!(!matches!(&got, Ok(b) if !b.is_empty()), "{got:?}");
    assert!(
        eventually(Duration::from_secs(5), || denied(
            &age,
            mesh.age_in,
            "default/deny-sentences"
        ) == 2.0),
        "{}",
        age.metrics_text()
    );
}

#[test]
fn check_lists_policies_and_names_the_bad_field() {
    let app = App::echo();
    let mesh = Mesh::new(app.port, "TCP", "PERMISSIVE");
    write_policy(
        &mesh,
        &(age_policy("only-sentences", "ALLOW", ONLY_SENTENCES, false)
            + "---\n"
            + &age_policy(
                "no-post",
                "DENY",
                "[{ to: [{ operation: { methods: [POST] } }] }]",
                true,
            )),
    );
    let config = mesh.config().to_str().unwrap().to_string();
    let out = outrider_ok(&["check", "--config", &config, "--workload", "age"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "authorization on port {}: ALLOW default/only-sentences, DENY default/no-post (dry-run)",
            mesh.age_in
        )),
        "{text}"
    );
    assert!(text.contains("may deny every TCP connection"), "{text}");
    assert!(
        text.contains("whose mode PERMISSIVE accepts plaintext"),
        "{text}"
    );

    write_policy(
        &mesh,
        "apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: { name: bad, namespace: default }\nspec:\n  rules:\n    - from:\n        - source:\n            ipBlocks: [10.0.0.0/33]\n",
    );
    let out = outrider(&["check", "--config", &config]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("authz.yaml:8:")
            && err.contains("spec.rules[0].from[0].source.ipBlocks: \"10.0.0.0/33\" is not an IP address or CIDR block"),
        "{err}"
    );
}
